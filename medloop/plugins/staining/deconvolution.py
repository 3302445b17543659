"""Ruifrok-Johnston colour deconvolution without clamping, and the spec's §4 test data.

Deconvolution: ``OD = -log(max(I, eps))``, ``C = OD M^-1``, back ``I = exp(-C M)``, with the rows
of ``M`` the stains' optical-density vectors. Unlike scikit-image's ``rgb2hed`` nothing is
clamped, so the round trip is exact to float precision (spec §6 check 2) and a recolouring by
changed concentrations or stain vectors has a known, exact inverse.

Test data (no confocal or H&E data ship with medloop): scikit-image's ``immunohistochemistry()``
(512 x 512 RGB, hematoxylin + DAB) is split into disjoint regions: region 1 = the top half (domain
A for training), region 2 = the bottom-left quarter (domain B), the held-out quarter = the bottom
right. Because domain A is *rendered from* a real image x, x is a paired ground truth for G(A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medloop.plugins.staining.checks import StainInputError, check_rgb

EPS = 1e-6
#: Regions of the 512 x 512 IHC image (rows, cols): training domain A, training domain B, held out.
REGION_A = (slice(0, 256), slice(0, 512))
REGION_B = (slice(256, 512), slice(0, 256))
REGION_TEST = (slice(256, 512), slice(256, 512))


def hed_matrix() -> np.ndarray:
    """scikit-image's stain matrix (rows: hematoxylin, eosin, DAB optical-density vectors)."""
    from skimage.color import rgb_from_hed

    return np.array(rgb_from_hed, dtype=np.float64)


def deconvolve(rgb: np.ndarray, matrix: np.ndarray | None = None, eps: float = EPS) -> np.ndarray:
    """Stain concentrations (..., 3) of RGB in [0, 1] (no clamping: they may be negative)."""
    m = hed_matrix() if matrix is None else np.asarray(matrix, np.float64)
    od = -np.log(np.maximum(np.asarray(rgb, np.float64), eps))
    return od @ np.linalg.inv(m)


def reconvolve(concentrations: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """RGB from stain concentrations (the exact inverse of :func:`deconvolve`; not clipped)."""
    m = hed_matrix() if matrix is None else np.asarray(matrix, np.float64)
    return np.exp(-np.asarray(concentrations, np.float64) @ m)


def ihc_image() -> np.ndarray:
    """scikit-image's IHC image as float64 RGB in [0, 1] (ships with scikit-image, no download)."""
    from skimage import data

    return data.immunohistochemistry().astype(np.float64) / 255.0


def robust_unit(channel: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """``channel`` with its 1st/99th percentiles mapped to 0/1, clipped (spec §4)."""
    lo, hi = np.percentile(channel, [lower, upper])
    if hi <= lo:
        raise StainInputError("simulated channel is constant between its percentiles; use an image with stained tissue")
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0)


def fcm_sim(rgb: np.ndarray) -> np.ndarray:
    """Simulated fluorescence: the robust-normalised hematoxylin concentration (nuclei bright)."""
    return robust_unit(deconvolve(check_rgb(rgb, "RGB image"))[..., 0])


def rcm_sim(rgb: np.ndarray) -> np.ndarray:
    """Simulated reflectance: robust-normalised inverted luma ``1 - Y`` (Paper A's own surrogate:
    tissue bright on a dark background)."""
    arr = check_rgb(rgb, "RGB image")
    luma = arr @ np.array([0.299, 0.587, 0.114])
    return robust_unit(1.0 - luma)


def noisy_rcm(rcm: np.ndarray, sd: float = 0.2, seed: int = 0) -> np.ndarray:
    """``rcm`` with multiplicative speckle N(1, sd) drawn per pixel (not clipped)."""
    from medloop.plugins.staining.despeckle import speckle

    return speckle(rcm, sd, np.random.default_rng(seed))


@dataclass(frozen=True)
class StainPerturbation:
    """A recolouring with a known inverse: hematoxylin concentration x ``h_scale``, DAB
    concentration x ``dab_scale`` and the DAB optical-density vector rotated by ``dab_hue_deg``
    about the grey axis (a hue shift of the brown)."""

    h_scale: float = 1.3
    dab_scale: float = 1.0
    dab_hue_deg: float = 40.0

    def matrix(self) -> np.ndarray:
        """The recoloured stain matrix."""
        m = hed_matrix()
        axis = np.ones(3) / np.sqrt(3.0)
        t = np.deg2rad(self.dab_hue_deg)
        v = m[2]
        # Rodrigues' rotation about the grey axis keeps the vector's length and its grey part.
        m[2] = v * np.cos(t) + np.cross(axis, v) * np.sin(t) + axis * (axis @ v) * (1 - np.cos(t))
        return m

    def scales(self) -> np.ndarray:
        return np.array([self.h_scale, 1.0, self.dab_scale])


def recolour(rgb: np.ndarray, perturbation: StainPerturbation = StainPerturbation()) -> np.ndarray:
    """``rgb`` (in [0, 1]) re-stained by ``perturbation`` (not clipped: see :func:`recolour_inverse`)."""
    c = deconvolve(check_rgb(rgb, "RGB image")) * perturbation.scales()
    return reconvolve(c, perturbation.matrix())


def recolour_inverse(rgb: np.ndarray, perturbation: StainPerturbation = StainPerturbation()) -> np.ndarray:
    """The exact inverse of :func:`recolour` (on its unclipped output)."""
    c = deconvolve(np.asarray(rgb, np.float64), perturbation.matrix()) / perturbation.scales()
    return reconvolve(c)


@dataclass(frozen=True)
class TransferData:
    """Unpaired training domains and a paired held-out pair (all float32 RGB in [0, 1]).

    ``train_a``/``train_b``: the two domains' training images (regions 1 and 2); ``test_a``: the
    held-out quarter in domain A; ``test_x``: its paired ground truth in domain B."""

    train_a: np.ndarray
    train_b: np.ndarray
    test_a: np.ndarray
    test_x: np.ndarray
    domain_a: str
    domain_b: str


def gareau_sim(rgb: np.ndarray) -> np.ndarray:
    """Gareau pseudo-H&E of the simulated confocal modes of ``rgb`` (default colours)."""
    from medloop.plugins.staining.confocal import gareau

    return gareau(fcm_sim(rgb), rcm_sim(rgb))


def transfer_data(kind: str = "gareau") -> TransferData:
    """The spec's §4 stain-transfer set-up on the IHC image.

    ``"gareau"``: domain A = Gareau(FCM_sim, RCM_sim) (Paper A's set-up); ``"recolour"``: domain A
    = the image re-stained by :class:`StainPerturbation` (Paper B's stain-to-stain, clipped to [0,
    1]). Domain B is always the real RGB. The simulated modes are normalised over the whole image
    (one acquisition), then cut into the regions."""
    x = ihc_image()
    if kind == "gareau":
        a, name = gareau_sim(x), "confocal-gareau"
    elif kind == "recolour":
        a, name = np.clip(recolour(x), 0.0, 1.0), "ihc-recoloured"
    else:
        raise StainInputError(f"stain-transfer data kind {kind!r} is unknown; choose 'gareau' or 'recolour'")
    f32 = lambda arr: np.ascontiguousarray(arr, dtype=np.float32)  # noqa: E731
    return TransferData(f32(a[REGION_A]), f32(x[REGION_B]), f32(a[REGION_TEST]), f32(x[REGION_TEST]), name, "ihc-brightfield")


def despeckle_data(sd: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean train, clean held-out, noisy held-out): RCM_sim of the IHC image, top half for
    training and bottom half held out, with fixed-seed speckle on the held-out half (clipped to [0, 1])."""
    rcm = rcm_sim(ihc_image()).astype(np.float32)
    train, test = rcm[:256], rcm[256:]
    return train, test, np.clip(noisy_rcm(test, sd, seed), 0.0, 1.0).astype(np.float32)
