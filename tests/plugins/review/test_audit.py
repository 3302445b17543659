"""The audit log: append-only, one record per line, concurrent appenders, torn last lines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medloop.plugins.review.audit import AuditLog, AuditLogError

REPO = Path(__file__).resolve().parents[3]


def test_append_then_read_in_order_and_never_rewrites(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.read().records == [] and not log.read().torn_tail  # missing file: empty
    log.append({"n": 1, "text": "line\nbreak é"})
    before = log.path.read_bytes()
    log.append({"n": 2})
    after = log.path.read_bytes()
    assert after.startswith(before)  # appended, the earlier bytes untouched
    assert after.count(b"\n") == 2 and after.endswith(b"\n")
    read = log.read()
    assert [r["n"] for r in read.records] == [1, 2] and read.problems == []
    assert read.records[0]["text"] == "line\nbreak é"


def test_non_json_record_is_refused_before_writing(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(AuditLogError, match="not plain JSON"):
        log.append({"dice": math.nan})
    assert not log.path.exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(AuditLogError, match="no-such-folder"):
        AuditLog(tmp_path / "no-such-folder" / "audit.jsonl").append({"n": 1})


def test_torn_last_line_is_reported_not_dropped_and_next_append_is_whole(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"n": 1})
    log.append({"n": 2})
    with open(log.path, "ab") as f:  # a writer killed mid-write
        f.write(b'{"n": 3, "case": "ca')
    read = log.read()
    assert [r["n"] for r in read.records] == [1, 2]
    assert read.torn_tail and len(read.problems) == 1
    p = read.problems[0]
    assert p.line_number == 3 and p.text.startswith('{"n": 3') and not p.kept
    assert "line 3" in read.describe_problems(log.path)

    log.append({"n": 4})  # must not be glued onto the fragment
    read = log.read()
    assert [r["n"] for r in read.records] == [1, 2, 4]
    assert not read.torn_tail and [q.line_number for q in read.problems] == [3]  # still reported


def test_complete_record_missing_only_its_newline_is_kept(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"n": 1})
    with open(log.path, "ab") as f:
        f.write(json.dumps({"n": 2}).encode())
    read = log.read()
    assert [r["n"] for r in read.records] == [1, 2] and read.torn_tail and read.problems[0].kept
    log.append({"n": 3})
    read = log.read()
    assert [r["n"] for r in read.records] == [1, 2, 3] and read.problems == []


def test_garbage_lines_and_non_objects_are_reported(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"n": 1}\n\x00\x00\x00\n[1, 2]\n\n{"n": 2}\n')
    read = AuditLog(path).read()
    assert [r["n"] for r in read.records] == [1, 2]
    assert [(p.line_number, p.torn_tail) for p in read.problems] == [(2, False), (3, False)]
    assert "not a JSON object" in read.problems[1].reason


APPENDER = textwrap.dedent(
    """
    import sys
    from medloop.plugins.review.audit import AuditLog
    log = AuditLog(sys.argv[1])
    who = sys.argv[2]
    for i in range(150):
        log.append({"who": who, "i": i, "pad": "x" * (50 + 37 * (i % 40))})
    """
)


def test_concurrent_appenders_never_lose_or_mix_records(tmp_path):
    path = tmp_path / "audit.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), f"w{k}"], cwd=REPO) for k in range(4)
    ]
    for p in procs:
        assert p.wait(60) == 0
    read = AuditLog(path).read()
    assert read.problems == []
    assert len(read.records) == 600
    for k in range(4):
        assert [r["i"] for r in read.records if r["who"] == f"w{k}"] == list(range(150))
