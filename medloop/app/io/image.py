"""The geometry-carrying image type shared by every reader, writer, method and layer.

Conventions (the same as SimpleITK, NIfTI-through-ITK and DICOM, so printed values match what
other tools print):

* ``array`` is indexed in reverse physical order: ``(z, y, x)`` for volumes, ``(y, x)`` for 2-D
  images, with an optional trailing channel axis (``rgb``/``channels``).
* ``spacing`` and ``origin`` are in (x, y[, z]) order, in millimetres (microns for microscopy;
  see ``unit``).
* ``direction`` is the ``ndim x ndim`` matrix whose column *i* is the physical (LPS) direction of
  index axis *i* (x, y, z), as ``SimpleITK.Image.GetDirection`` returns it reshaped.

The physical position of array index ``(k, j, i)`` is ``origin + direction @ (spacing * (i, j, k))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MedImage:
    """An image array with its physical geometry and where it came from."""

    array: Any  # numpy.ndarray or dask.array.Array
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    channel_axis: bool = False
    modality: str = ""
    unit: str = "mm"
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    # Multiscale images (whole slides): every level, finest first; ``array`` is level 0.
    pyramid: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        n = self.ndim
        if n not in (2, 3):
            raise ValueError(f"MedImage supports 2 or 3 spatial axes, got {n}")
        direction = np.asarray(self.direction, dtype=float).reshape(n, n)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        if len(self.spacing) != n or len(self.origin) != n:
            raise ValueError(
                f"spacing {self.spacing} and origin {self.origin} need {n} values for a "
                f"{n}-D image of shape {self.shape}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        """Number of spatial axes (the channel axis, if any, is not counted)."""
        return len(self.array.shape) - int(self.channel_axis)

    @classmethod
    def from_array(
        cls,
        array: Any,
        spacing: tuple[float, ...] | None = None,
        origin: tuple[float, ...] | None = None,
        direction: np.ndarray | None = None,
        **kwargs: Any,
    ) -> "MedImage":
        """Wrap an array; missing geometry defaults to unit spacing, zero origin, identity."""
        n = len(array.shape) - int(kwargs.get("channel_axis", False))
        return cls(
            array=array,
            spacing=tuple(spacing) if spacing is not None else (1.0,) * n,
            origin=tuple(origin) if origin is not None else (0.0,) * n,
            direction=np.eye(n) if direction is None else direction,
            **kwargs,
        )

    def with_array(self, array: Any, **changes: Any) -> "MedImage":
        """The same geometry around another array of the same spatial shape (e.g. a mask)."""
        spatial = tuple(array.shape[: self.ndim])
        if spatial != self.shape[: self.ndim]:
            raise ValueError(f"array shape {array.shape} does not match image shape {self.shape}")
        return replace(self, array=array, **{"pyramid": (), **changes})

    @property
    def is_multiscale(self) -> bool:
        return len(self.pyramid) > 1

    def layer_data(self) -> Any:
        """The data napari should display: the list of levels for a pyramid, else the array."""
        return list(self.pyramid) if self.is_multiscale else self.array

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Physical coordinates (x, y[, z]) of continuous indices given in (x, y[, z]) order."""
        idx = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (self.direction @ (np.asarray(self.spacing) * idx).T).T

    def affine_xyz(self) -> np.ndarray:
        """(n+1)x(n+1) index-to-physical matrix in ITK (x, y[, z]) order."""
        n = self.ndim
        a = np.eye(n + 1)
        a[:n, :n] = self.direction * np.asarray(self.spacing)[None, :]
        a[:n, n] = self.origin
        return a

    def layer_kwargs(self) -> dict[str, Any]:
        """napari layer keyword arguments that place every voxel at its physical position.

        ``scale`` is always the spacing (array order). A non-identity direction becomes an
        ``affine`` holding the rotation and origin; otherwise the origin is the ``translate``.
        ``units`` (one per axis: mm for volumes, µm for slides) make napari's scale bar and
        status bar read physical lengths.
        """
        scale = tuple(self.spacing[::-1])
        if np.allclose(self.direction, np.eye(self.ndim), atol=1e-12):
            kwargs: dict[str, Any] = {"scale": scale, "translate": tuple(self.origin[::-1])}
        else:
            n = self.ndim
            affine = np.eye(n + 1)
            affine[:n, :n] = self.direction[::-1, ::-1]
            affine[:n, n] = self.origin[::-1]
            kwargs = {"scale": scale, "affine": affine}
        kwargs["units"] = (napari_unit(self.unit),) * self.ndim
        if self.channel_axis:
            kwargs["rgb"] = self.array.shape[-1] in (3, 4)
        if self.is_multiscale:
            kwargs["multiscale"] = True
        return kwargs

    @classmethod
    def from_layer(
        cls, data: Any, scale: Any, translate: Any, affine: np.ndarray | None = None, **kwargs: Any
    ) -> "MedImage":
        """Inverse of :meth:`layer_kwargs` for a layer's data, scale, translate and affine."""
        scale = np.asarray(scale, dtype=float)
        n = len(scale)
        lin = np.eye(n) if affine is None else np.asarray(affine, dtype=float)[:n, :n]
        shift = np.zeros(n) if affine is None else np.asarray(affine, dtype=float)[:n, n]
        # world = lin @ (scale * i + translate) + shift; fold translate into the origin.
        origin_zyx = lin @ np.asarray(translate, dtype=float) + shift
        return cls(
            array=data,
            spacing=tuple(scale[::-1]),
            origin=tuple(origin_zyx[::-1]),
            direction=lin[::-1, ::-1],
            **kwargs,
        )


#: MedImage.unit -> the unit name napari (pint) understands.
_NAPARI_UNITS = {"mm": "mm", "um": "um", "µm": "um", "micron": "um", "nm": "nm", "cm": "cm", "px": "pixel", "": "pixel"}


def napari_unit(unit: str) -> str:
    """The napari layer unit of a MedImage ``unit`` (pixels when it is not a length)."""
    return _NAPARI_UNITS.get(str(unit).strip().lower().replace("μ", "µ"), str(unit) or "pixel")
