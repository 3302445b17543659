"""Nuclei from one click each: Voronoi and cluster pseudo-labels, their loss and the CRF loss
(Qu et al., MIDL 2019; spec weak-supervision.md section 3).

Pseudo-label maps use the paint convention: 0 = ignored, 1 = background, 2 = nucleus.

* :func:`voronoi_labels` - Voronoi cell edges of the points = background, the points dilated by a
  radius-2 disk = nucleus. Splits touching nuclei; says nothing about their extent.
* :func:`cluster_labels` - k-means (k = 3) on per-pixel (d, r, g, b), d = distance to the nearest
  point clipped (at 20 px for Qu et al.'s click density; scaled to the clicks' spacing here),
  colours rescaled to 0-20 (the range of Qu et al.'s clipped d); the cluster holding most points =
  nucleus, the cluster overlapping the dilated points least = background, the rest ignored, then
  a morphological opening. Gives nuclear extent; cannot split touching nuclei.
* :func:`point_loss` - L_ce = L_cluster + L_vor, each a binary cross-entropy averaged over its map's
  non-ignored pixels.
* :func:`pairwise_crf_loss` - the relaxed dense-CRF term L_pair = sum_ij y_i (1 - y_j) W_ij,
  W = Gaussian on (x/s_pq, y/s_pq, r/s_rgb, g/s_rgb, b/s_rgb), computed exactly over a truncated
  window by shifting the probability map (Qu et al. use permutohedral filtering over all pairs);
  :func:`pairwise_crf_loss_dense` is the all-pairs reference for small images.

Points are (row, column) pixel coordinates as napari's Points layer stores them for a 2-D image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from medloop.app.errors import MedloopWarning
from medloop.plugins.correction.weaklabels import AnnotationError, as_rng

__all__ = [
    "CrfParams",
    "clean_points",
    "cluster_labels",
    "crf_loss",
    "crf_point_loss",
    "disk",
    "pairwise_crf_loss",
    "pairwise_crf_loss_dense",
    "point_loss",
    "voronoi_labels",
]

IGNORED, BACKGROUND, NUCLEUS = 0, 1, 2
DENSE_MAX_PIXELS = 64 * 64  # the dense reference builds an (HW)^2 matrix
CLIP_MAX = 20.0  # Qu et al.'s distance clip (px)
COLOUR_RANGE = 20.0  # colours rescaled to 0..COLOUR_RANGE, the range of Qu et al.'s clipped distance
CLIP_PER_SPACING = 0.45  # default clip = this x the clicks' mean spacing sqrt(H W / N), at most CLIP_MAX


def disk(radius: int) -> np.ndarray:
    """Boolean disk footprint: offsets with dy^2 + dx^2 <= radius^2 (as skimage's ``disk``)."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= r * r


# --- point validation ---------------------------------------------------------------------------


def clean_points(points: np.ndarray, shape: tuple[int, int], min_points: int = 2) -> np.ndarray:
    """Pixel positions ``(N, 2)`` int64 of usable points, in their given order.

    Coordinates round to the nearest pixel (halves up). Points outside the image are dropped and
    points less than 1 px from an earlier one merged into it, each with a :class:`MedloopWarning`
    giving the count. Fewer than ``min_points`` left, NaN/inf coordinates or a wrong shape raise
    :class:`AnnotationError`.
    """
    p = np.asarray(points, dtype=float)
    if p.size == 0:
        p = p.reshape(0, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise AnnotationError(f"points must be an (N, 2) array of (row, column) coordinates, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise AnnotationError("points hold NaN or infinite coordinates; delete and re-click them")
    pix = np.floor(p + 0.5).astype(np.int64)
    inside = np.all((pix >= 0) & (pix < np.asarray(shape[-2:])), axis=1)
    if not inside.all():
        n_out = int((~inside).sum())
        warnings.warn(f"{n_out} point(s) outside the image were dropped", MedloopWarning, stacklevel=2)
        p, pix = p[inside], pix[inside]
    keep = np.ones(len(p), bool)
    if len(p) > 1:
        from scipy.spatial import cKDTree

        pairs = cKDTree(p).query_pairs(np.nextafter(1.0, 0.0), output_type="ndarray")  # distance < 1
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs
        for i, j in pairs:  # i < j: the earlier point absorbs the later one
            if keep[i]:
                keep[j] = False
        # Points >= 1 px apart can still round to one pixel; keep the first there too.
        _, first = np.unique(pix[keep], axis=0, return_index=True)
        kept = np.flatnonzero(keep)
        keep[:] = False
        keep[kept[np.sort(first)]] = True
    if not keep.all():
        n_merged = int((~keep).sum())
        warnings.warn(f"{n_merged} point(s) less than 1 px from another were merged", MedloopWarning, stacklevel=2)
        pix = pix[keep]
    if len(pix) < min_points:
        raise AnnotationError(
            f"need at least {min_points} points inside the image, got {len(pix)}; click one point per nucleus"
        )
    return pix


# --- pseudo-labels ------------------------------------------------------------------------------


def voronoi_labels(points: np.ndarray, shape: tuple[int, int], radius: int = 2) -> np.ndarray:
    """Voronoi point-edge label (uint8, ``shape``): 1 on cell edges, 2 on the points dilated by a
    ``radius`` disk (wins over edges), 0 elsewhere (ignored).

    Cells are the pixels' nearest points. Of two 4-neighbours in different cells, the one nearer
    the bisector of their points is an edge pixel (both when equally near), so edges are thin
    lines on the bisector (within 1 px). The image border is not an edge.
    """
    shape = tuple(int(s) for s in shape[-2:])
    pix = clean_points(points, shape)
    ids = np.zeros(shape, np.int64)
    ids[pix[:, 0], pix[:, 1]] = np.arange(1, len(pix) + 1)
    _, nearest = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    cell = ids[nearest[0], nearest[1]] - 1  # index of each pixel's nearest point
    edge = np.zeros(shape, bool)
    grid = np.indices(shape, dtype=float)
    for axis in (0, 1):
        # Neighbour pairs (p, q) along ``axis`` in different cells A (p's) and B (q's).
        lo = tuple(slice(None, -1) if ax == axis else slice(None) for ax in (0, 1))
        hi = tuple(slice(1, None) if ax == axis else slice(None) for ax in (0, 1))
        a, b = cell[lo], cell[hi]

        def dist(where: tuple[slice, slice], to: np.ndarray) -> np.ndarray:
            return np.hypot(grid[0][where] - pix[to, 0], grid[1][where] - pix[to, 1])

        # How far past the bisector each pixel lies; the nearer one (both on a tie) is the edge,
        # which keeps edges 1 px thin and on the exact bisector where a pixel row meets it.
        past_p = dist(lo, b) - dist(lo, a)
        past_q = dist(hi, a) - dist(hi, b)
        differ = a != b
        edge[lo] |= differ & (past_p <= past_q)
        edge[hi] |= differ & (past_q <= past_p)
    out = np.zeros(shape, np.uint8)
    out[edge] = BACKGROUND
    out[ndimage.binary_dilation(ids > 0, disk(radius))] = NUCLEUS
    return out


def _kmeans(
    x: np.ndarray, k: int, gen: np.random.Generator, n_init: int = 3, max_iter: int = 100, max_fit: int = 200_000
) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; labels of the lowest-inertia of ``n_init`` runs.

    Centres are fitted on at most ``max_fit`` random pixels (a large slide tile would otherwise
    cost seconds per iteration), then every pixel takes its nearest centre.
    """
    fit = x if len(x) <= max_fit else x[gen.choice(len(x), max_fit, replace=False)]
    n = len(fit)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = [fit[gen.integers(n)]]
        for _ in range(1, k):
            d2 = np.min([((fit - c) ** 2).sum(1) for c in centres], axis=0)
            total = d2.sum()
            centres.append(fit[gen.choice(n, p=d2 / total)] if total > 0 else fit[gen.integers(n)])
        c = np.array(centres)
        for _ in range(max_iter):
            labels = ((fit[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
            new = np.array([fit[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        d = ((fit[:, None, :] - c[None]) ** 2).sum(2)
        inertia = d.min(1).sum()
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return ((x[:, None, :] - best[None]) ** 2).sum(2).argmin(1)


def cluster_labels(
    image: np.ndarray,
    points: np.ndarray,
    k: int = 3,
    clip: float | None = None,
    radius: int = 2,
    opening_radius: int = 1,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Cluster label (uint8, (H, W)): 2 = nucleus cluster, 1 = background cluster, 0 = ignored.

    ``image`` (C, H, W) or (H, W), any value range. Features per pixel: the distance to the nearest
    point clipped at ``clip``, and the channels rescaled together from the image's min..max to
    0..``COLOUR_RANGE`` (20, Qu et al.'s d range: "similar range").

    ``clip`` None (default): ``min(20, CLIP_PER_SPACING * sqrt(H * W / points))``, i.e. scaled to
    the mean spacing of the clicks. Qu et al.'s fixed 20 px fits their density (~600 nuclei per
    ~900^2 px tile, spacing ~37 px, giving ~16.5 here). With a fixed 20 on crowded tiles (64^2,
    ~11 nuclei, spacing ~19 px) the stroma's distances spread over 3..15 px while its colour is
    flat, so k-means spent its third cluster on a *distance band* of stroma (~60 % of the
    pixels, ignored) instead of the nucleus rims, and the background cluster held only ~1/3 of
    the true background. With the clip scaled to the spacing (~8.5 px there) and colours kept
    at 0..20, the ignored cluster is either the rims (~5 % of pixels) or a narrower band next to
    the nuclei, and 70-97 % of the background is labelled at >= 0.997 accuracy (generator (b)).

    One channel (grayscale) clusters on (d, intensity), with a :class:`MedloopWarning`. Nucleus =
    the cluster holding the most point pixels; background = the cluster overlapping the points
    dilated by a ``radius`` disk least, ties to the one farthest from the points on average (if that is the nucleus
    cluster: the next, with a warning); other clusters are ignored. Each of the two masks is then
    opened with an ``opening_radius`` disk (pixels removed become ignored). Seeded by ``rng``.
    """
    img = np.asarray(image, dtype=float)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise AnnotationError(f"cluster labels need a (C, H, W) or (H, W) image, got shape {np.shape(image)}")
    if not np.all(np.isfinite(img)):
        raise AnnotationError("the image holds NaN or infinite pixels; fix or mask them before making labels")
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    shape = img.shape[1:]
    pix = clean_points(points, shape)
    if img.shape[0] == 1:
        warnings.warn("the image is grayscale; clustering on (distance, intensity)", MedloopWarning, stacklevel=2)
    seeds = np.zeros(shape, bool)
    seeds[pix[:, 0], pix[:, 1]] = True
    if clip is None:
        clip = min(CLIP_MAX, CLIP_PER_SPACING * float(np.sqrt(seeds.size / len(pix))))
    distance = np.minimum(ndimage.distance_transform_edt(~seeds), clip)
    lo, hi = float(img.min()), float(img.max())
    colours = (img - lo) / (hi - lo) * COLOUR_RANGE if hi > lo else np.zeros_like(img)
    features = np.concatenate([distance[None], colours]).reshape(img.shape[0] + 1, -1).T
    clusters = _kmeans(features, k, as_rng(rng)).reshape(shape)
    at_points = np.bincount(clusters[seeds], minlength=k)
    nucleus = int(at_points.argmax())
    near = np.bincount(clusters[ndimage.binary_dilation(seeds, disk(radius))], minlength=k)
    # Ties (typically several clusters that miss the small dilated points entirely) go to the
    # cluster farthest from the points on average: the stroma, not the ring around nuclei.
    mean_distance = ndimage.mean(distance, clusters, index=np.arange(k))
    order = np.lexsort((-np.nan_to_num(mean_distance), near))
    background = int(order[0])
    if background == nucleus:
        warnings.warn(
            "the nucleus cluster also overlaps the clicked points least; using the next cluster as background",
            MedloopWarning,
            stacklevel=2,
        )
        background = int(order[1])
    footprint = disk(opening_radius)
    out = np.zeros(shape, np.uint8)
    out[ndimage.binary_opening(clusters == background, footprint)] = BACKGROUND
    out[ndimage.binary_opening(clusters == nucleus, footprint)] = NUCLEUS
    return out


# --- losses --------------------------------------------------------------------------------------


def _log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(background), log P(nucleus), each (N, H, W), from 2-channel or 1-channel logits."""
    if logits.ndim != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(f"logits must be (N, 2, H, W) or (N, 1, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return F.logsigmoid(-z), F.logsigmoid(z)
    logp = F.log_softmax(logits, dim=1)
    return logp[:, 0], logp[:, 1]


def _label_tensor(labels: np.ndarray | torch.Tensor, logits: torch.Tensor, name: str) -> torch.Tensor:
    t = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    t = t.to(logits.device).long()
    if t.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"{name} shape {tuple(t.shape)} does not match logits {tuple(logits.shape)} (want (N, H, W))")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > NUCLEUS):
        raise ValueError(f"{name} must hold 0 (ignored), 1 (background) or 2 (nucleus)")
    return t


def point_loss(logits: torch.Tensor, voronoi: np.ndarray | torch.Tensor, cluster: np.ndarray | torch.Tensor) -> torch.Tensor:
    """L_ce = L_vor + L_cluster: binary cross-entropy of the nucleus probability against each map,
    averaged over that map's non-ignored pixels in the batch (a map with none adds 0).

    ``logits`` (N, 2, H, W) (channel 1 = nucleus) or (N, 1, H, W) (sigmoid); maps (N, H, W) with
    0 = ignored, 1 = background, 2 = nucleus. Ignored pixels get exactly zero gradient.
    """
    log_bg, log_fg = _log_probs(logits)
    total = (logits * 0).sum()  # keeps the result on the graph when both maps are empty
    for name, labels in (("voronoi", voronoi), ("cluster", cluster)):
        t = _label_tensor(labels, logits, name)
        known = t > 0
        if bool(known.any()):
            total = total - torch.where(t[known] == NUCLEUS, log_fg[known], log_bg[known]).mean()
    return total


def _foreground(probs: torch.Tensor) -> torch.Tensor:
    """Nucleus probabilities (N, H, W) from (N, H, W), (N, 1, H, W) or softmax (N, 2, H, W)."""
    if probs.ndim == 3:
        return probs
    if probs.ndim == 4 and probs.shape[1] in (1, 2):
        return probs[:, -1]
    raise ValueError(f"probs must be (N, H, W), (N, 1, H, W) or (N, 2, H, W), got shape {tuple(probs.shape)}")


def _features(image: np.ndarray | torch.Tensor, y: torch.Tensor, s_rgb: float, value_range: float) -> torch.Tensor:
    """Colour features (N, C, H, W) = image on a 0-255 scale / s_rgb, as constants (no gradient)."""
    img = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
    img = img.detach().to(device=y.device, dtype=y.dtype)
    if img.ndim == 2:
        img = img[None, None]
    elif img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-2:] != y.shape[-2:] or img.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"image shape {tuple(np.shape(image))} does not fit probabilities {tuple(y.shape)}")
    # Qu et al.'s s_rgb = 10 is in 8-bit units; read [0, value_range] images on that scale.
    return img.expand(y.shape[0], -1, -1, -1) * (255.0 / value_range) / s_rgb


def pairwise_crf_loss(
    probs: torch.Tensor,
    image: np.ndarray | torch.Tensor,
    s_pq: float = 10.0,
    s_rgb: float = 10.0,
    radius: int = 5,
    value_range: float = 1.0,
) -> torch.Tensor:
    """L_pair = sum_{i != j} y_i (1 - y_j) W_ij over pairs within a square window (|dy|, |dx| <=
    ``radius``), divided by the pixel count N*H*W; exact, with no lattice approximation.

    W_ij = exp(-|p_i - p_j|^2 / (2 s_pq^2) - |c_i - c_j|^2 / (2 s_rgb^2)), positions in px,
    colours ``image`` (N|1, C, H, W), (C, H, W) or (H, W) in [0, ``value_range``] read on a 0-255
    scale (Qu et al.'s units). ``probs``: nucleus probabilities, see :func:`_foreground`. Each
    offset and its mirror are done at once, using W's symmetry: y_i(1-y_j) + y_j(1-y_i).
    """
    y = _foreground(probs)
    f = _features(image, y, s_rgb, value_range)
    n, h, w = y.shape
    total = y.new_zeros(())
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx <= 0) or dy >= h or abs(dx) >= w:
                continue
            # i = (r, c), j = (r + dy, c + dx), both inside the image.
            ci, cj = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            yi, yj = y[:, : h - dy, ci], y[:, dy:, cj]
            colour = ((f[:, :, : h - dy, ci] - f[:, :, dy:, cj]) ** 2).sum(1)
            weight = torch.exp(-0.5 * colour - (dy * dy + dx * dx) / (2.0 * s_pq * s_pq))
            total = total + (weight * (yi * (1 - yj) + yj * (1 - yi))).sum()
    return total / (n * h * w)


def pairwise_crf_loss_dense(
    probs: torch.Tensor,
    image: np.ndarray | torch.Tensor,
    s_pq: float = 10.0,
    s_rgb: float = 10.0,
    value_range: float = 1.0,
) -> torch.Tensor:
    """Reference L_pair over all pairs i != j with the full (HW x HW) W, divided by N*H*W; for
    images of at most 64 x 64 pixels (tests of :func:`pairwise_crf_loss`)."""
    y = _foreground(probs)
    n, h, w = y.shape
    if h * w > DENSE_MAX_PIXELS:
        raise ValueError(f"the dense reference is for images of at most {DENSE_MAX_PIXELS} pixels, got {h}x{w}")
    f = _features(image, y, s_rgb, value_range).flatten(2).transpose(1, 2)  # (N, HW, C)
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    grid = grid.to(device=y.device, dtype=y.dtype) / s_pq
    total = y.new_zeros(())
    for b in range(n):
        feats = torch.cat([grid, f[b]], dim=1)
        big_w = torch.exp(-0.5 * torch.cdist(feats, feats) ** 2)
        big_w = big_w - torch.diag(torch.diagonal(big_w))
        yb = y[b].reshape(-1)
        total = total + yb @ big_w @ (1 - yb)
    return total / (n * h * w)


@dataclass(frozen=True)
class CrfParams:
    """The CRF term of :func:`crf_point_loss`: its weight ``beta``, the kernel widths ``s_pq``
    (positions, px) and ``s_rgb`` (colours, 0-255 units), the window ``radius`` and the
    image's ``value_range`` (see :func:`pairwise_crf_loss`)."""

    beta: float = 1.0
    s_pq: float = 10.0
    s_rgb: float = 10.0
    radius: int = 5
    value_range: float = 1.0


def crf_point_loss(
    logits: torch.Tensor,
    voronoi: np.ndarray | torch.Tensor,
    cluster: np.ndarray | torch.Tensor,
    image: np.ndarray | torch.Tensor,
    params: CrfParams = CrfParams(),
) -> torch.Tensor:
    """L_crf = L_ce + beta * L_pair, the fine-tuning loss. ``beta`` must be re-tuned for the
    windowed, per-pixel L_pair (spec: the prototype used 1.0, not the paper's 0.0005)."""
    _, log_fg = _log_probs(logits)
    pair = pairwise_crf_loss(log_fg.exp(), image, params.s_pq, params.s_rgb, params.radius, params.value_range)
    return point_loss(logits, voronoi, cluster) + params.beta * pair


def crf_loss(
    logits: torch.Tensor,
    voronoi: np.ndarray | torch.Tensor,
    cluster: np.ndarray | torch.Tensor,
    image: np.ndarray | torch.Tensor,
    beta: float = 1.0,
    s_pq: float = 10.0,
    s_rgb: float = 10.0,
    radius: int = 5,
    value_range: float = 1.0,
) -> torch.Tensor:
    """:func:`crf_point_loss` with the fields of :class:`CrfParams` as keyword arguments."""
    return crf_point_loss(logits, voronoi, cluster, image, CrfParams(beta, s_pq, s_rgb, radius, value_range))
