"""Keep decoder chatter off the terminal.

GDCM, libjpeg, OpenJPEG, libtiff and ITK print warnings straight to the C-level stderr (file
descriptor 2), past Python's ``sys.stderr``. That breaks the CLI's one-line error contract and
clutters successful reads. :func:`quiet_decoders` points fd 2 at a temporary file while a decoder
runs, turns ITK's own warning display off, and hands back what was printed so the caller can keep
it (in the image's metadata) instead of showing it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Iterator

_LOCK = threading.RLock()  # fd 2 is process-wide: one redirection at a time
_DEPTH = 0


class Chatter:
    """What the decoders printed while :func:`quiet_decoders` was active (filled on exit)."""

    def __init__(self) -> None:
        self.text = ""

    @property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.splitlines() if line.strip()]


@contextlib.contextmanager
def quiet_decoders() -> Iterator[Chatter]:
    """Silence C-level stderr and ITK warnings for the duration; yields a :class:`Chatter`."""
    global _DEPTH
    chatter = Chatter()
    with _LOCK:
        if _DEPTH:  # already redirected by an outer call: the outer one collects the text
            _DEPTH += 1
            try:
                yield chatter
            finally:
                _DEPTH -= 1
            return
        # ITK's warning display is switched off only if ITK is in use (importing it costs ~0.3 s,
        # too much for opening a slide); its callers import it before they get here.
        sitk = sys.modules.get("SimpleITK")
        before = sitk.ProcessObject.GetGlobalWarningDisplay() if sitk is not None else None
        if sitk is not None:
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (some embedded interpreters): nothing to silence
            saved = None
        sink = tempfile.TemporaryFile()
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        _DEPTH = 1
        try:
            yield chatter
        finally:
            _DEPTH = 0
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            if sitk is not None:
                sitk.ProcessObject.SetGlobalWarningDisplay(before)
            sink.seek(0)
            chatter.text = sink.read(65536).decode("utf-8", "replace")
            sink.close()
