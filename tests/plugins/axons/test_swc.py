"""SWC files (SNT / Vaa3D / napari-tracing): exact round trips, SNT's own files, one-line errors;
napari's Points CSV for seeds."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.errors import MedloopError
from medloop.plugins.axons.points import PointsFileError, parse_points_csv, points_csv_text, read_points_csv
from medloop.plugins.axons.swc import SwcError, format_swc, parse_swc, read_swc, write_swc

RNG = np.random.default_rng(7)
TRACES = [RNG.uniform(0, 64, size=(23, 2)), RNG.uniform(0, 64, size=(5, 2)), np.array([[3.25, 4.5]])]

# As SNT 4 writes it (PathAndFillManager): its header, Java doubles (one in E notation), a branch at
# node 3, a second tree, CRLF line ends; micrometres with 0.5 x 0.25 um pixels.
SNT_FILE = (
    "# Exported from SNT v4.2.1 on 2023-06-12T10:15:31.123\r\n"
    "# https://imagej.net/plugins/snt/\r\n"
    "#\r\n"
    "# All positions and radii in micrometers\r\n"
    "# Voxel separation (x,y,z): 0.5, 0.25, 1.0\r\n"
    "#\r\n"
    "1 2 10.0 5.0 0.0 0.5 -1\r\n"
    "2 2 11.0 5.5 0.0 0.5 1\r\n"
    "3 2 1.2E1 6.0 0.0 0.5 2\r\n"
    "4 2 13.0 6.0 0.0 0.5 3\r\n"
    "5 2 12.5 7.0 0.0 0.5 3\r\n"
    "6 2 12.5 8.25 0.0 0.5 5\r\n"
    "7 3 2.0 2.0 0.0 0.5 -1\r\n"
    "8 3 3.0 2.5 0.0 0.5 7\r\n"
)


def test_round_trip_in_pixels_is_exact(tmp_path):
    meta = [{"seed_id": 0, "steps": 22, "stop_reason": "end", "mean_entropy": -2.5}, {"seed_id": 1}, {}]
    path = write_swc(tmp_path / "t.swc", TRACES, meta=meta)
    back = read_swc(path)
    assert len(back.paths) == 3 and all(np.array_equal(a, b) for a, b in zip(back.paths, TRACES))  # bit for bit
    assert back.unit == "pixels" and back.spacing == (1.0, 1.0)
    assert back.meta[0] == {"seed_id": "0", "steps": "22", "stop_reason": "end", "mean_entropy": "-2.5", "tree": "1", "branch": "0"}
    assert back.meta[2] == {"tree": "3", "branch": "0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.swc"]  # atomic: no temporary file left


def test_layout_x_is_column_y_is_row_one_tree_per_seed():
    text = format_swc([np.array([[2.0, 3.0], [4.0, 5.5]]), np.array([[7.0, 1.0]])])
    nodes = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert nodes == [["1", "2", "3.0", "2.0", "0.0", "1.0", "-1"], ["2", "2", "5.5", "4.0", "0.0", "1.0", "1"],
                     ["3", "2", "1.0", "7.0", "0.0", "1.0", "-1"]]
    assert "# All positions and radii in pixels" in text


def test_physical_units_from_the_spacing_and_back(tmp_path):
    path = write_swc(tmp_path / "um.swc", TRACES, spacing=(0.5, 0.25), unit="um")
    text = path.read_text()
    assert "# All positions and radii in micrometers" in text and "# Voxel separation (x,y,z): 0.5, 0.25, 1.0" in text
    first = text.splitlines()[4].split()
    assert float(first[2]) == TRACES[0][0, 1] * 0.5 and float(first[3]) == TRACES[0][0, 0] * 0.25
    back = read_swc(path)  # back to pixels through the header
    assert back.unit == "micrometers" and back.header_spacing == (0.5, 0.25)
    for a, b in zip(back.paths, TRACES):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)  # x / 0.5 and y / 0.25 are exact in binary
    stretched = read_swc(path, spacing=(1.0, 1.0))  # an explicit spacing wins over the header
    np.testing.assert_allclose(stretched.paths[0][:, 1], TRACES[0][:, 1] * 0.5)


@pytest.mark.parametrize("decimals", [2, 4])
def test_fixed_decimals_round_trip_to_the_written_precision(tmp_path, decimals):
    back = read_swc(write_swc(tmp_path / "d.swc", TRACES, spacing=(0.3, 0.3), unit="um", decimals=decimals))
    for a, b in zip(back.paths, TRACES):
        assert np.max(np.abs(a - b)) <= 0.5 * 10.0**-decimals / 0.3 + 1e-12


def test_reads_a_file_as_snt_writes_it(tmp_path):
    path = tmp_path / "snt.swc"
    path.write_bytes(SNT_FILE.encode())
    data = read_swc(path)
    assert data.unit == "micrometers" and data.spacing == (0.5, 0.25)
    assert len(data.paths) == 3  # tree 1 split at its branch point, then tree 2
    np.testing.assert_array_equal(data.paths[0], [[20.0, 20.0], [22.0, 22.0], [24.0, 24.0], [24.0, 26.0]])
    np.testing.assert_array_equal(data.paths[1], [[24.0, 24.0], [28.0, 25.0], [33.0, 25.0]])  # from the branch point
    np.testing.assert_array_equal(data.paths[2], [[8.0, 4.0], [10.0, 6.0]])
    assert [(m["tree"], m["branch"]) for m in data.meta] == [("1", "0"), ("1", "1"), ("2", "0")]


def test_nodes_in_any_order_and_parent_after_child():
    data = parse_swc("3 2 3 0 0 1 2\n1 2 1 0 0 1 -1\n2 2 2 0 0 1 1\n")
    np.testing.assert_array_equal(data.paths[0], [[0, 1], [0, 2], [0, 3]])


@pytest.mark.parametrize("body, message", [
    ("1 2 1 0 0 1\n", "line 2: expected 7 fields (id type x y z radius parent), got 6; fix or remove the line"),
    ("1 2 a 0 0 1 -1\n", "line 2: x, y, z and radius must be numbers, got 'a 0 0 1'; fix the line"),
    ("1.5 2 1 0 0 1 -1\n", "line 2: id, type and parent must be whole numbers, got '1.5', '2', '-1'; fix the line"),
    ("1 2 nan 0 0 1 -1\n", "line 2: non-finite coordinate or radius (nan 0 0 1); fix the line"),
    ("1 2 1 0 0 1 -1\n2 2 1 0 0 1 9\n", "line 3: parent 9 of node 2 is not a node of the file; fix the line"),
    ("1 2 1 0 0 1 -1\n1 2 2 0 0 1 1\n", "line 3: node id 1 is used twice (also line 2); renumber the nodes"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.swc"
    path.write_text("# a comment\n" + body)
    with pytest.raises(SwcError) as err:
        read_swc(path)
    assert str(err.value) == f"{path} {message}"
    assert "\n" not in str(err.value) and isinstance(err.value, MedloopError)


def test_cycles_empty_files_and_missing_files_are_refused(tmp_path):
    cycle = tmp_path / "cycle.swc"
    cycle.write_text("1 2 1 0 0 1 -1\n2 2 1 0 0 1 3\n3 2 1 0 0 1 2\n")
    with pytest.raises(SwcError, match=r"cycle.swc: 2 node\(s\) are not connected to a root \(parent -1\), e.g. a cycle"):
        read_swc(cycle)
    empty = tmp_path / "empty.swc"
    empty.write_text("# only comments\n\n")
    with pytest.raises(SwcError, match="empty.swc has no nodes"):
        read_swc(empty)
    with pytest.raises(SwcError, match="cannot read .*none.swc: No such file or directory; check the path"):
        read_swc(tmp_path / "none.swc")
    with pytest.raises(SwcError, match="cannot write .*no/such/t.swc"):
        write_swc(tmp_path / "no" / "such" / "t.swc", TRACES)
    with pytest.raises(SwcError, match="trace 1 is empty or has non-finite vertices"):
        format_swc([TRACES[0], np.array([[np.nan, 1.0]])])


def test_points_csv_as_napari_writes_it(tmp_path):
    text = points_csv_text([[10.5, 20.25], [3.0, 4.0]])
    assert text == "index,axis-0,axis-1\n0,10.5,20.25\n1,3.0,4.0\n"
    path = tmp_path / "seeds.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_points_csv(path), [[10.5, 20.25], [3.0, 4.0]])
    assert parse_points_csv("index,axis-0,axis-1\n").shape == (0, 2)  # no seeds: the tracer says so


@pytest.mark.parametrize("text, message", [
    ("row,col\n1,2\n", "s.csv: first line must be napari's Points CSV header 'index,axis-0,axis-1' (row, column), got 'row,col'"),
    ("index,axis-0,axis-1,axis-2\n0,1,2,3\n", "s.csv has 3 coordinates per point (axis-0, axis-1, axis-2); tracing needs 2-D points"),
    ("index,axis-0,axis-1\n0,1,x\n", "s.csv line 2: '0,1,x' has no numeric axis-0 (row) and axis-1 (column); fix the line"),
    ("", "s.csv is empty"),
])
def test_bad_points_csv(text, message):
    with pytest.raises(PointsFileError) as err:
        parse_points_csv(text, "s.csv")
    assert str(err.value).startswith(message)
