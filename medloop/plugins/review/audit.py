"""The review audit trail: an append-only JSON-lines file, one decision per line.

Why this shape: a clinical review must be able to show who decided what, when, on which model,
and the record must survive crashes and concurrent reviewers. So the log is never rewritten:

* every record is appended with **one** ``write()`` on a descriptor opened with ``O_APPEND``
  (the kernel places it at the current end, so two processes never overwrite each other), under an
  exclusive ``flock`` where the platform has one, then ``fsync``-ed before :meth:`AuditLog.append`
  returns: a decision reported as saved is on disk;
* a process killed during that write can leave a *torn* last line (no newline, partial JSON).
  Readers report it (:attr:`AuditRead.problems`, :attr:`AuditRead.torn_tail`) instead of
  crashing or hiding it, and the next append first ends the fragment with a newline so the new
  record is never glued onto it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloop.app.errors import MedloopError

try:  # POSIX advisory locks; O_APPEND alone already keeps appends whole on local disks
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class AuditLogError(MedloopError):
    """The audit log cannot be written or read."""


@dataclass(frozen=True)
class BadLine:
    """A line of the log that is not a complete JSON record (kept on disk, never dropped)."""

    line_number: int  # 1-based
    offset: int  # byte offset of the line's start
    text: str  # the line, shortened to 200 characters
    reason: str
    torn_tail: bool  # the file's last line, without its newline: a write cut short by a crash
    kept: bool = False  # the line was a complete record after all and is among the records


@dataclass(frozen=True)
class AuditRead:
    """What :meth:`AuditLog.read` found: the good records in file order, and every bad line."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[BadLine] = field(default_factory=list)

    @property
    def torn_tail(self) -> bool:
        """Whether the last line was cut short (the writer was killed mid-write)."""
        return any(p.torn_tail for p in self.problems)

    def describe_problems(self, path: str | os.PathLike) -> str:
        """One line for a warning: which lines of ``path`` were skipped and why."""
        parts = [
            f"line {p.line_number} ({p.reason if p.kept else 'torn last line' if p.torn_tail else p.reason})"
            for p in self.problems
        ]
        return (
            f"audit log {path}: incomplete or invalid {', '.join(parts)} (a write cut short by a crash); "
            "they stay in the file, lines that are not whole records are not counted as decisions, every other record was read"
        )


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as one UTF-8 line (ASCII-escaped, so a line never contains a raw newline)."""
    try:
        text = json.dumps(record, ensure_ascii=True, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise AuditLogError(f"cannot log record {record!r}: not plain JSON ({exc}); this is a bug, please report it") from None
    return (text + "\n").encode("ascii")


class AuditLog:
    """Append-only JSON-lines log at ``path`` (created on first append)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` durably: one write, flushed and fsync-ed before returning.

        Raises:
            AuditLogError: the folder is missing or not writable (message names the file).
        """
        line = encode_record(record)
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise AuditLogError(
                f"cannot write audit log {self.path} ({exc.strerror}); check that the review folder exists and is writable"
            ) from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size and _last_byte(self.path, size) != b"\n":
                    line = b"\n" + line  # close a torn line left by a crash; keep it, never overwrite it
                view = memoryview(line)
                while view:  # a regular-file write is whole in practice; loop for the pathological case
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise AuditLogError(f"cannot write audit log {self.path} ({exc.strerror}); the decision was not recorded") from None
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)

    def read(self) -> AuditRead:
        """Every complete record in order; bad or torn lines are reported in ``problems``.

        A missing log reads as empty (a project nobody has reviewed yet).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AuditRead()
        except OSError as exc:
            raise AuditLogError(f"cannot read audit log {self.path} ({exc.strerror}); check its permissions") from None
        records: list[dict[str, Any]] = []
        problems: list[BadLine] = []
        offset = 0
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, start=1):
            start = offset
            offset += len(raw) + 1
            is_last = number == len(lines)
            if not raw.strip():
                continue
            torn = is_last  # text after the final newline: the write never finished
            try:
                value = json.loads(raw.decode("utf-8"))
                reason = "" if isinstance(value, dict) else "not a JSON object"
            except (UnicodeDecodeError, ValueError) as exc:
                value, reason = None, f"not valid JSON ({exc.__class__.__name__})"
            if reason or torn:
                text = raw.decode("utf-8", errors="replace")
                kept = not reason  # complete JSON, only its newline missing: the next append ends it
                problems.append(
                    BadLine(number, start, text[:200], "complete record without its newline (kept)" if kept else reason, torn, kept)
                )
                if not kept:
                    continue
            records.append(value)
        return AuditRead(records, problems)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def _fsync_dir(folder: Path) -> None:
    """Make a new file's directory entry durable too (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
