"""Atomic file replacement: write beside the target, then rename, so a crash never leaves a
partial file and a failed write never damages the previous version."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block succeeds it replaces ``path``
    (with the permissions a plain ``open`` would give, not mkstemp's 0600); on any exception it
    is removed and ``path`` is left as it was."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, suffix: str = ".tmp") -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename); returns the path."""
    with atomic_target(path, suffix=suffix) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, suffix: str = ".tmp") -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), suffix=suffix)


def atomic_torch_save(obj: object, path: str | os.PathLike, suffix: str = ".pt") -> Path:
    """``torch.save`` ``obj`` (a state dict, a checkpoint) to ``path`` atomically; returns the path.

    Saved through a buffer: torch names the zip's records after the file it writes, so saving to
    a randomly named temporary file would make equal weights differ byte for byte (and sha256)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue(), suffix=suffix)
