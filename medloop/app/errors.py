"""medloop's error hierarchy.

Every error a user can cause is a :class:`MedloopError`; its message names the input and says
what to do. The CLI prints it as one line and exits with code 2; the GUI shows it as a
notification and stays up.
"""

from __future__ import annotations


class MedloopError(Exception):
    """Base class for errors caused by input, settings or the environment (not by bugs)."""


class ImageReadError(MedloopError):
    """An image file or folder cannot be read."""


class ImageWriteError(MedloopError):
    """An image cannot be written where asked."""


class ResourceError(MedloopError):
    """A packaged resource (sample, weights, card) is missing or damaged."""


class ImageMismatchError(MedloopError):
    """A label map (or other companion image) does not fit its image's shape or geometry."""


class MedloopWarning(UserWarning):
    """Something the user should know about their data that did not stop the work."""
