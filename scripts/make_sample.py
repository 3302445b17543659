"""Regenerate medloop's packaged brain sample from the MNI152 2009 files that nilearn ships.

    .venv/bin/pip install nilearn   # dev-only dependency
    .venv/bin/python scripts/make_sample.py

Writes ``medloop/resources/sample/{mni152_t1_2mm,mni152_tissue_2mm,mni152_tissue_prob_2mm}.nii.gz``
and their ``manifest.json`` (sha256, provenance). Labels: 0 background, 1 grey matter, 2 white
matter, the most probable of (1 - p_gm - p_wm, p_gm, p_wm) inside nilearn's brain mask. The
probability file holds (CSF, GM, WM) x 255 as a 3-component uint8 image on the same grid: the
soft maps the robust brain model's synthetic heads are drawn from (``medloop.app.engine.synth``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "medloop" / "resources" / "sample"


def _to_sitk(nifti_img, array):
    """SimpleITK image with the nilearn image's geometry (nibabel RAS → ITK LPS via a file)."""
    import nibabel as nib
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ref.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(array.shape, np.uint8), nifti_img.affine), path)
        ref = sitk.ReadImage(str(path))
    # nibabel arrays are (x, y, z); SimpleITK arrays are (z, y, x).
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    img.CopyInformation(ref)
    return img


def mni_arrays(resolution: int):
    """nilearn's MNI152 2009 T1 (x1000, int16) and tissue labels at ``resolution`` mm, with the
    nilearn image whose geometry they share (nilearn reads its package data: no download)."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj) > 0

    t1_data = np.asarray(t1.dataobj, dtype=np.float32)
    t1_i16 = np.round(np.clip(t1_data, 0, None) * 1000).astype(np.int16)
    probs = np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm])
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    labels[~mask] = 0
    return t1, t1_i16, labels


def tissue_probabilities(resolution: int) -> np.ndarray:
    """(x, y, z, 3) uint8: CSF, GM and WM probability x 255. The brain is nilearn's mask with the
    GM + WM > 0.5 voxels added and its holes filled; CSF is what GM and WM leave inside it."""
    from nilearn import datasets
    from scipy import ndimage

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj) > 0
    brain = ndimage.binary_fill_holes(mask | (gm + wm > 0.5))
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0)
    return np.round(np.stack([csf, gm, wm], axis=-1) * 255).clip(0, 255).astype(np.uint8)


def load_mni(resolution: int):
    """``(t1, tissue)`` MedImages of the MNI152 2009 template at ``resolution`` mm (dev extra:
    needs nilearn); the packaged sample is the 2 mm version."""
    from medloop.app.io.sitk_convert import from_sitk

    t1, t1_i16, labels = mni_arrays(resolution)
    return from_sitk(_to_sitk(t1, t1_i16)), from_sitk(_to_sitk(t1, labels))


def main() -> None:
    import SimpleITK as sitk
    from nilearn import __version__ as nilearn_version

    t1, t1_i16, labels = mni_arrays(2)

    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, name, arr in (
        ("t1", "mni152_t1_2mm.nii.gz", t1_i16),
        ("tissue", "mni152_tissue_2mm.nii.gz", labels),
    ):
        path = OUT / name
        sitk.WriteImage(_to_sitk(t1, arr), str(path), useCompression=True)
        files[key] = {"name": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest = {
        "description": "MNI ICBM152 2009a nonlinear symmetric T1 template, brain-extracted, "
        "resampled to 2 mm by nilearn, with grey/white-matter labels from its tissue probability maps",
        "generated_by": "scripts/make_sample.py",
        "nilearn_version": nilearn_version,
        "classes": {"0": "background", "1": "grey matter", "2": "white matter"},
        "t1_scale": "template intensity x 1000, int16",
        "files": files,
        "license": "LICENSE-MNI152.txt",
    }
    prob_path = OUT / "mni152_tissue_prob_2mm.nii.gz"
    prob = tissue_probabilities(2)
    vector = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(prob, (2, 1, 0, 3))), isVector=True)
    vector.CopyInformation(_to_sitk(t1, t1_i16))
    sitk.WriteImage(vector, str(prob_path), useCompression=True)
    files["tissue_prob"] = {"name": prob_path.name, "sha256": hashlib.sha256(prob_path.read_bytes()).hexdigest(),
                            "channels": ["csf", "grey matter", "white matter"], "scale": 255}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    counts = np.bincount(labels.ravel(), minlength=3)
    print("wrote", OUT, "label counts", counts.tolist())


if __name__ == "__main__":
    main()
