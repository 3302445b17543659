"""Lossless conversion between SimpleITK images and :class:`MedImage`."""

from __future__ import annotations

import numpy as np

from medloop.app.io.image import MedImage


def from_sitk(img, path: str | None = None, metadata: dict | None = None) -> MedImage:
    """A :class:`MedImage` holding a SimpleITK image's voxels and full geometry."""
    import SimpleITK as sitk

    n = img.GetDimension()
    array = sitk.GetArrayFromImage(img)
    channels = img.GetNumberOfComponentsPerPixel() > 1
    meta = dict(metadata or {})
    for key in img.GetMetaDataKeys():
        meta.setdefault(key, img.GetMetaData(key))
    return MedImage(
        array=array,
        spacing=img.GetSpacing(),
        origin=img.GetOrigin(),
        direction=np.asarray(img.GetDirection()).reshape(n, n),
        channel_axis=channels,
        metadata=meta,
        path=path,
    )


def to_sitk(image: MedImage):
    """A SimpleITK image with the same voxels and geometry (dask arrays are computed)."""
    import SimpleITK as sitk

    array = np.asarray(image.array)
    img = sitk.GetImageFromArray(array, isVector=image.channel_axis)
    img.SetSpacing(image.spacing)
    img.SetOrigin(image.origin)
    img.SetDirection(tuple(image.direction.ravel()))
    return img
