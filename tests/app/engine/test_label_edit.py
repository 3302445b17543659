"""Mask correction tools on hand-made label arrays, with exact expected outputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medloop.app.errors import ImageMismatchError, MedloopError
from medloop.app.engine.label_edit import (
    EditError,
    copy_prediction,
    dilate,
    erode,
    fill_holes,
    interpolate_slices,
    keep_largest_component,
    remove_small_islands,
    smooth,
)


def _a(rows: str) -> np.ndarray:
    """A 2-D int32 array from rows of digits."""
    return np.array([[int(c) for c in r] for r in rows.split()], dtype=np.int32)


# -------------------------------------------------------------------------------- fill_holes


def test_fill_holes_fills_a_ring_exactly():
    ring = _a("0000000 0111110 0100010 0100010 0100010 0111110 0000000")
    full = _a("0000000 0111110 0111110 0111110 0111110 0111110 0000000")
    np.testing.assert_array_equal(fill_holes(ring, 1), full)


def test_fill_holes_leaves_open_shapes_and_other_labels():
    c_shape = _a("00000 01110 01000 01110 00000")
    np.testing.assert_array_equal(fill_holes(c_shape, 1), c_shape)
    ring = _a("11111 12221 12321 12221 11111")  # paint convention: 1 background, 2 foreground
    np.testing.assert_array_equal(fill_holes(ring, 2), ring)  # default fills 0 only
    np.testing.assert_array_equal(
        fill_holes(ring, 2, background=1), ring  # hole holds label 3 only: nothing to fill
    )
    ring2 = _a("1111111 1222221 1211121 1213121 1211121 1222221 1111111")
    np.testing.assert_array_equal(
        fill_holes(ring2, 2, background=1),
        _a("1111111 1222221 1222221 1223221 1222221 1222221 1111111"),
    )


def test_fill_holes_3d_volumetric_vs_slice_by_slice():
    tube = np.zeros((3, 5, 5), np.int32)
    tube[:, 1:4, 1:4] = 1
    tube[:, 2, 2] = 0  # open at both ends: no 3-D hole
    np.testing.assert_array_equal(fill_holes(tube, 1), tube)
    expected = tube.copy()
    expected[:, 2, 2] = 1
    np.testing.assert_array_equal(fill_holes(tube, 1, axis=0), expected)
    closed = tube.copy()
    closed[0, 2, 2] = closed[2, 2, 2] = 1  # cap both ends: now a 3-D cavity
    np.testing.assert_array_equal(fill_holes(closed, 1), expected)


# --------------------------------------------------------------------------- small islands


ISLANDS = _a(
    """
    11111111
    12221111
    12221121
    12221121
    11111121
    11111111
    """
)


def test_island_of_three_removed_with_min_size_4_but_not_2_or_3():
    expected = ISLANDS.copy()
    expected[2:5, 6] = 1  # the 3-px island takes its surrounding label
    np.testing.assert_array_equal(remove_small_islands(ISLANDS, 2, 4), expected)
    np.testing.assert_array_equal(remove_small_islands(ISLANDS, 2, 3), ISLANDS)
    np.testing.assert_array_equal(remove_small_islands(ISLANDS, 2, 2), ISLANDS)
    # the 9-px block goes too with min_size 10
    np.testing.assert_array_equal(remove_small_islands(ISLANDS, 2, 10), np.ones_like(ISLANDS))


def test_island_takes_surrounding_label_or_fill():
    lab = _a("000000 033330 032330 033330 000000")
    out = remove_small_islands(lab, 2, 2)
    np.testing.assert_array_equal(out, _a("000000 033330 033330 033330 000000"))
    np.testing.assert_array_equal(
        remove_small_islands(lab, 2, 2, fill=0), _a("000000 033330 030330 033330 000000")
    )
    # on the border between 0 (3 neighbours) and 4 (1 neighbour): the most common wins
    lab = _a("0000 0200 0400")
    np.testing.assert_array_equal(remove_small_islands(lab, 2, 2), _a("0000 0000 0400"))
    # 4-neighbours 3, 4, 4, 4 -> 4
    assert remove_small_islands(_a("030 424 040"), 2, 2)[1, 1] == 4
    # 4-neighbours 3 and 4 tie -> the smaller value, 3
    np.testing.assert_array_equal(remove_small_islands(_a("33 24"), 2, 2), _a("33 34"))


def test_islands_with_spacing_and_connectivity():
    # the 3-px island has area 6 at 1 x 2 spacing
    out = remove_small_islands(ISLANDS, 2, 5, spacing=(1.0, 2.0))
    np.testing.assert_array_equal(out, ISLANDS)
    out = remove_small_islands(ISLANDS, 2, 7, spacing=(1.0, 2.0))
    assert (out[2:5, 6] == 1).all() and (out[1:4, 1:4] == 2).all()
    diag = _a("0000 0100 0010 0000")
    np.testing.assert_array_equal(remove_small_islands(diag, 1, 2), np.zeros_like(diag))
    np.testing.assert_array_equal(remove_small_islands(diag, 1, 2, connectivity=2), diag)


def test_islands_3d():
    vol = np.zeros((4, 4, 4), np.int32)
    vol[0:2, 0:2, 0:2] = 5  # 8 voxels
    vol[3, 3, 3] = 5  # 1 voxel
    expected = vol.copy()
    expected[3, 3, 3] = 0
    np.testing.assert_array_equal(remove_small_islands(vol, 5, 2), expected)
    np.testing.assert_array_equal(keep_largest_component(vol, 5), expected)


def test_keep_largest_component():
    lab = _a("1111111 1221121 1221121 1111121 1111111")
    np.testing.assert_array_equal(
        keep_largest_component(lab, 2), _a("1111111 1221111 1221111 1111111 1111111")
    )
    tie = _a("2010 2010")
    np.testing.assert_array_equal(keep_largest_component(tie, 2), tie)  # single component
    tie = _a("20202")
    np.testing.assert_array_equal(keep_largest_component(tie, 2), _a("20000"))  # first wins
    np.testing.assert_array_equal(keep_largest_component(tie, 2, fill=7), _a("20707"))


# ---------------------------------------------------------------------- dilate / erode / smooth


def _point(shape, value=1):
    lab = np.zeros(shape, np.int32)
    lab[tuple(s // 2 for s in shape)] = value
    return lab


def test_dilate_single_pixel_gives_cross_then_square():
    np.testing.assert_array_equal(dilate(_point((5, 5)), 1, 1), _a("00000 00100 01110 00100 00000"))
    np.testing.assert_array_equal(
        dilate(_point((5, 5)), 1, 1.5), _a("00000 01110 01110 01110 00000")
    )
    np.testing.assert_array_equal(dilate(_point((5, 5)), 1, 2), _a("00100 01110 11111 01110 00100"))
    np.testing.assert_array_equal(dilate(_point((5, 5)), 1, 0), _point((5, 5)))


def test_dilate_3d_gives_six_neighbour_cross():
    out = dilate(_point((3, 3, 3)), 1, 1)
    np.testing.assert_array_equal(out, ndimage.generate_binary_structure(3, 1).astype(np.int32))


def test_dilate_in_physical_units():
    # spacing is (x, y): pixels are 1 wide and 2 tall; radius 2 reaches 2 columns, 1 row
    np.testing.assert_array_equal(
        dilate(_point((5, 5)), 1, 2, spacing=(1.0, 2.0)), _a("00000 00100 11111 00100 00000")
    )


def test_dilate_never_overwrites_other_labels():
    lab = _a("00000 00000 00130 00000 00000")
    np.testing.assert_array_equal(dilate(lab, 1, 1), _a("00000 00100 01130 00100 00000"))
    paint = _a("11111 11111 11231 11111 11111")  # 1 background, 2 fg, 3 another class
    np.testing.assert_array_equal(dilate(paint, 2, 1), paint)  # background 0 by default
    np.testing.assert_array_equal(
        dilate(paint, 2, 1, background=1), _a("11111 11211 12231 11211 11111")
    )


def test_erode_square_and_border():
    lab = np.zeros((7, 7), np.int32)
    lab[1:6, 1:6] = 2
    expected = np.zeros_like(lab)
    expected[2:5, 2:5] = 2
    np.testing.assert_array_equal(erode(lab, 2, 1), expected)
    expected[lab == 2] = 9
    expected[2:5, 2:5] = 2
    np.testing.assert_array_equal(erode(lab, 2, 1, background=9), expected)
    corner = np.zeros((6, 6), np.int32)
    corner[:4, :4] = 1  # touches the top and left border: not eroded from there
    expected = np.zeros_like(corner)
    expected[:3, :3] = 1
    np.testing.assert_array_equal(erode(corner, 1, 1), expected)
    np.testing.assert_array_equal(erode(np.ones((3, 3), np.int32), 1, 5), np.ones((3, 3)))


def test_smooth_removes_specks_and_fills_pinholes():
    yy, xx = np.mgrid[:11, :11] - 5
    diamond = np.where(np.abs(yy) + np.abs(xx) <= 3, 2, 1).astype(np.int32)
    noisy = diamond.copy()
    noisy[5, 5] = 1  # pinhole
    noisy[0, 10] = 2  # speck
    noisy[10, 0] = 3  # another label, next to nothing: untouched
    expected = diamond.copy()
    expected[10, 0] = 3
    np.testing.assert_array_equal(smooth(noisy, 2, 1, background=1), expected)
    # with background 0 (default) the pinhole (value 1) is another label and is not painted
    out = smooth(noisy, 2, 1)
    assert out[5, 5] == 1 and out[0, 10] == 0


def _ball(r: float, sampling) -> np.ndarray:
    n = [int(np.floor(r / s)) for s in sampling]
    grids = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(n, sampling)], indexing="ij")
    return sum(g**2 for g in grids) <= r**2 + 1e-9


@pytest.mark.parametrize(
    "shape,spacing,radius",
    [((40, 40), None, 2.0), ((40, 40), (0.5, 1.0), 2.2), ((12, 20, 20), (1.0, 1.0, 2.5), 3.0)],
)
def test_morphology_matches_scipy_with_ball_footprint(shape, spacing, radius):
    rng = np.random.default_rng(0)
    m = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
    lab = np.where(m, 4, 0).astype(np.int16)
    sampling = (1.0,) * len(shape) if spacing is None else tuple(spacing)[::-1]
    fp = _ball(radius, sampling)
    ref_dil = ndimage.binary_dilation(m, fp)
    ref_ero = ndimage.binary_erosion(m, fp, border_value=1)
    opened = ndimage.binary_dilation(ndimage.binary_erosion(m, fp, border_value=1), fp)
    ref_smooth = ndimage.binary_erosion(ndimage.binary_dilation(opened, fp), fp, border_value=1)
    np.testing.assert_array_equal(dilate(lab, 4, radius, spacing=spacing) == 4, ref_dil)
    np.testing.assert_array_equal(erode(lab, 4, radius, spacing=spacing) == 4, ref_ero)
    np.testing.assert_array_equal(smooth(lab, 4, radius, spacing=spacing) == 4, ref_smooth)


# ------------------------------------------------------------------------- interpolation


def _disk(shape, r, centre):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r**2


@pytest.mark.parametrize("centre", [(12.0, 12.0), (11.5, 12.5)])
def test_interpolate_disk_radius_4_to_8_gives_6(centre):
    vol = np.zeros((5, 25, 25), np.int32)
    vol[0][_disk((25, 25), 4, centre)] = 2
    vol[4][_disk((25, 25), 8, centre)] = 2
    out = interpolate_slices(vol, 2)
    np.testing.assert_array_equal(out[[0, 4]], vol[[0, 4]])
    area = (out[2] == 2).sum()
    assert abs(area - np.pi * 36) <= 0.1 * np.pi * 36
    areas = [(out[k] == 2).sum() for k in range(5)]
    assert areas == sorted(areas)  # grows monotonically from r 4 to r 8
    cy, cx = ndimage.center_of_mass(out[2] == 2)
    assert (cy, cx) == pytest.approx(centre, abs=0.3)


def test_interpolate_leaves_outer_slices_and_other_labels():
    vol = np.zeros((7, 15, 15), np.int32)
    vol[1][_disk((15, 15), 3, (7, 7))] = 1
    vol[5][_disk((15, 15), 3, (7, 7))] = 1
    vol[3, 7, 7] = 9  # another label inside the interpolated region
    out = interpolate_slices(vol, 1)
    assert out[3, 7, 7] == 9
    for k in (2, 3, 4):
        expected = _disk((15, 15), 3, (7, 7))
        if k == 3:
            expected[7, 7] = False
        np.testing.assert_array_equal(out[k] == 1, expected)
    np.testing.assert_array_equal(out[[0, 6]], vol[[0, 6]])


def test_interpolate_along_another_axis_and_moving_shape():
    vol = np.zeros((9, 9, 5), np.int32)
    vol[2:5, 2:5, 0] = 3  # overlapping shapes (disjoint ones may vanish midway: a known
    vol[4:7, 4:7, 4] = 3  # limit of distance-map interpolation)
    out = interpolate_slices(vol, 3, axis=2)
    np.testing.assert_array_equal(
        np.moveaxis(out, 2, 0), interpolate_slices(np.moveaxis(vol, 2, 0), 3, axis=0)
    )
    assert all((out[:, :, k] == 3).any() for k in range(5))  # never vanishes midway
    ys, xs = np.nonzero(out[:, :, 2] == 3)
    assert (ys.mean(), xs.mean()) == pytest.approx((4.0, 4.0))


def test_interpolate_errors():
    vol = np.zeros((4, 5, 5), np.int32)
    vol[1, 2, 2] = 1
    with pytest.raises(EditError) as exc:
        interpolate_slices(vol, 1)
    assert str(exc.value) == (
        "Slice interpolation needs label 1 on at least two slices along axis 0; found 1."
    )
    with pytest.raises(EditError) as exc:
        interpolate_slices(vol[1], 1)
    assert str(exc.value) == "Slice interpolation needs a 3-D label array, got shape (5, 5)."
    assert isinstance(exc.value, MedloopError)


# ------------------------------------------------------------------------- copy_prediction


def test_copy_prediction():
    ann = _a("01 20")
    pred = _a("22 01")
    np.testing.assert_array_equal(copy_prediction(pred, ann), _a("21 21"))
    np.testing.assert_array_equal(copy_prediction(pred, ann, overwrite=True), _a("22 21"))
    assert copy_prediction(pred.astype(np.int64), ann.astype(np.uint8)).dtype == np.uint8
    with pytest.raises(ImageMismatchError) as exc:
        copy_prediction(pred, np.zeros((3, 2), np.int32))
    assert str(exc.value) == (
        "The prediction's shape (2, 2) differs from the annotation's (3, 2); segment the "
        "annotated image again before copying."
    )
    with pytest.raises(EditError, match="do not fit"):
        copy_prediction(pred * 200, ann.astype(np.uint8))


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs():
    with pytest.raises(EditError, match="integer labels"):
        dilate(np.zeros((3, 3)), 1, 1)
    with pytest.raises(EditError, match="2-D or 3-D"):
        erode(np.zeros((3,), np.int32), 1, 1)
    with pytest.raises(EditError, match="zero or positive"):
        smooth(np.zeros((3, 3), np.int32), 1, -1)
    with pytest.raises(EditError, match=r"needs 2 positive values \(x, y\[, z\]\)"):
        dilate(np.zeros((3, 3), np.int32), 1, 1, spacing=(1.0, 1.0, 1.0))


# ------------------------------------------------------------------------ inputs unchanged


CALLS = [
    lambda a: fill_holes(a, 2, background=1),
    lambda a: fill_holes(a, 2, axis=0),
    lambda a: remove_small_islands(a, 2, 4),
    lambda a: remove_small_islands(a, 2, 4, fill=0),
    lambda a: keep_largest_component(a, 2),
    lambda a: dilate(a, 2, 1, background=1),
    lambda a: erode(a, 2, 1, background=1),
    lambda a: smooth(a, 2, 1, background=1),
    lambda a: interpolate_slices(a, 2),
    lambda a: copy_prediction(np.full_like(a, 2), a),
    lambda a: copy_prediction(a, np.zeros_like(a), overwrite=True),
]


@pytest.mark.parametrize("call", CALLS)
def test_inputs_are_never_modified(call):
    vol = np.ones((5, 9, 9), np.int32)
    vol[0, 2:7, 2:7] = 2
    vol[0, 4, 4] = 1
    vol[4, 3:6, 3:6] = 2
    vol[4, 0, 8] = 2
    vol[2, 0, 0] = 3
    before = vol.copy()
    out = call(vol)
    np.testing.assert_array_equal(vol, before)
    assert out is not vol and not np.shares_memory(out, vol)
    assert out.shape == vol.shape and out.dtype == vol.dtype
