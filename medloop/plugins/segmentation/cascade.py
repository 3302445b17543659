"""Segment-then-segment (seed 002, Benčević et al. 2022) for 2-D images and 3-D volumes: a coarse
model on the whole image downscaled to its input size S finds the objects; each object is cropped from the
full-resolution image, segmented by a fine model at the same input size S, and the crops'
outputs are pasted back and fused. Small networks keep the full-resolution detail of the
objects because the crops, not the whole image, are resized to S.

Crop boxes (:func:`crop_boxes`), for every connected component (8-connected; 26 in 3-D) of the
coarse foreground (argmax != background); volumes get cubes, in voxels, the same way:

1. its bounding box on the coarse grid is scaled to the full-resolution grid (outward: a coarse
   pixel covers ``[r * H / h, (r + 1) * H / h)``);
2. components whose scaled box is narrower or lower than ``min_size`` (5) pixels are dropped:
   the paper's noise filter. It is applied to the object's box *before* padding, since a padded
   crop is never under ``2 k`` pixels, and once more to the final crop (an image under 5 px);
3. the box is padded by ``k`` on all four sides (default ``S // 8``, as the paper's code),
   squared to its larger side (the shorter side grows around its centre, the extra odd pixel
   after it), and shifted, keeping its size, to lie inside the image; a side larger than the
   image is clipped to the image instead (that crop is then not square).

Resizing: image crops (and the whole image for the coarse stage) are resized to S x S with
bilinear interpolation, antialiased when shrinking (``F.interpolate(mode="bilinear",
antialias=True, align_corners=False)``; the paper's nearest neighbour aliases when shrinking
8x); volumes are averaged by area down to the smaller size per axis, then trilinear. Probabilities go back to the crop's size the same way (bilinear, so boundaries fall between
the coarse pixels), and labels are their argmax.

Fusion (:func:`fuse_crops`): each pixel takes the class probabilities of the crop with the
highest foreground probability ``1 - p(background)`` there, i.e. the maximum probability of
the foreground over overlapping crops; for two classes its label is exactly the logical OR of
the crops' masks. Pixels outside every crop are background (probability 1): the coarse
foreground lies inside the crops except for components dropped as too small.

K classes: both models must have the same classes; "foreground" is any class but 0, a crop is
made per connected component of the coarse foreground, and the winning crop's whole class
vector is kept (for K = 2 this is the paper's OR). One-channel (sigmoid) outputs count as
(1 - p, p).

Training the fine model (:func:`fine_crop_pairs`): crops of the ground truth's connected
components, each box coordinate and size jittered by a uniform random whole number in
``[-jitter, jitter]`` full-resolution pixels (default ``k // 2``; the paper's code: ±16 px with
k = 16) before squaring and padding, resized to S; images without objects give the whole image
resized to S, as in the paper.

Training the coarse model (:func:`coarse_training_pairs`): the paper's coarse model is its
baseline at S, trained on masks downscaled like images; objects smaller than about half a pixel
at S vanish from those masks, so the model learns to ignore them and the cascade never crops
them. Our default target ``"any"`` marks a pixel at S foreground when any pixel it covers is:
the coarse model then over-covers small objects (poor as a segmentation, as intended for a
detector) and the fine model outlines them at full resolution.

Qt-free; :func:`~medloop.plugins.segmentation.method.segment` runs it for the panel and the CLI
(``medloop segment --model COARSE --cascade FINE``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medloop.app.engine.jobs import check_stop

MIN_CROP = 5
Box = tuple[int, ...]
"""``(y0, x0, y1, x1)``: rows ``y0:y1`` and columns ``x0:x1`` of the full-resolution image; for a
volume ``(z0, y0, x0, z1, y1, x1)``: the starts, then the (exclusive) ends, per array axis."""


@dataclass
class CascadeResult:
    probabilities: np.ndarray  # (K, *spatial) float32 on the image's grid
    boxes: list[Box] = field(default_factory=list)  # the crops the fine model segmented
    coarse_probabilities: np.ndarray | None = None  # (K, S, S[, S]) of the coarse stage


def default_padding(input_size: int | Sequence[int]) -> int:
    """The paper's code pads by S // 8 full-resolution pixels."""
    first = input_size if isinstance(input_size, (int, np.integer)) else list(input_size)[0]
    return int(first) // 8


# ------------------------------------------------------------------------------------- boxes


def component_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding box (starts, then exclusive ends; ``(y0, x0, y1, x1)`` in 2-D) of every fully
    connected component (8-connected in 2-D, 26 in 3-D) of ``mask > 0``, in label order."""
    mask = np.asarray(mask) > 0
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    return [tuple(sl.start for sl in s) + tuple(sl.stop for sl in s) for s in ndimage.find_objects(labels) if s is not None][:n]


def expand_box(box: Sequence[int], image_shape: Sequence[int], padding: int) -> Box:
    """Pad ``box`` by ``padding`` on every side, make it square (a cube in 3-D) of its largest
    side and shift it inside ``image_shape`` (clipped to the image where it is larger)."""
    n = len(box) // 2
    starts = [int(v) - padding for v in box[:n]]
    stops = [int(v) + padding for v in box[n:]]
    side = max(b - a for a, b in zip(starts, stops))
    out_start, out_stop = [], []
    for a, b, size in zip(starts, stops, image_shape):
        start = a - (side - (b - a)) // 2
        if side >= size:
            out_start.append(0)
            out_stop.append(int(size))
        else:
            start = min(max(start, 0), int(size) - side)
            out_start.append(start)
            out_stop.append(start + side)
    return tuple(out_start) + tuple(out_stop)


def scale_box(box: Sequence[int], scale: Sequence[float]) -> Box:
    """A coarse-grid box on the full-resolution grid (outward rounding)."""
    n = len(box) // 2
    starts = tuple(int(np.floor(box[i] * scale[i] + 1e-9)) for i in range(n))
    stops = tuple(int(np.ceil(box[n + i] * scale[i] - 1e-9)) for i in range(n))
    return starts + stops


def box_slices(box: Sequence[int]) -> tuple[slice, ...]:
    """The array index of a box."""
    n = len(box) // 2
    return tuple(slice(int(box[i]), int(box[n + i])) for i in range(n))


def box_shape(box: Sequence[int]) -> tuple[int, ...]:
    n = len(box) // 2
    return tuple(int(box[n + i]) - int(box[i]) for i in range(n))


def crop_boxes(
    coarse_mask: np.ndarray, image_shape: Sequence[int], padding: int, min_size: int = MIN_CROP
) -> list[Box]:
    """The crops for a coarse foreground mask (on any grid covering the image's extent): see
    the module docstring for the steps."""
    coarse_mask = np.asarray(coarse_mask)
    scale = [size / coarse for size, coarse in zip(image_shape, coarse_mask.shape)]
    boxes = []
    for box in component_boxes(coarse_mask):
        scaled = scale_box(box, scale)
        if min(box_shape(scaled)) < min_size:
            continue
        crop = expand_box(scaled, image_shape, padding)
        if min(box_shape(crop)) >= min_size:
            boxes.append(crop)
    return boxes


# ----------------------------------------------------------------------------------- resizing


def _sizes(size: int | Sequence[int], n: int) -> tuple[int, ...]:
    """``size`` as ``n`` whole numbers (one number: the same on every axis)."""
    if isinstance(size, (int, np.integer)):
        return (int(size),) * n
    size = tuple(int(v) for v in size)
    if len(size) == 1:
        return size * n
    if len(size) != n:
        raise ValueError(f"size {size} does not fit a {n}-D image")
    return size


def resize(x: torch.Tensor, size: int | Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """``(N, C, *spatial)`` float tensor (2-D or 3-D) resized to ``size``: linear, antialiased
    when shrinking (2-D: bilinear with ``antialias``; 3-D: area averaging down to the smaller
    size, then trilinear); ``mode="nearest"``: the paper's nearest neighbour, for reproducing
    its protocol. The same size returns ``x`` unchanged."""
    dims = x.dim() - 2
    size = _sizes(size, dims)
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode != "bilinear":
        raise ValueError(f"resize mode must be 'bilinear' or 'nearest', got {mode!r}")
    if dims == 2:
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    smaller = tuple(min(a, b) for a, b in zip(x.shape[2:], size))  # torch has no antialiased trilinear
    if smaller != tuple(x.shape[2:]):
        x = F.interpolate(x, size=smaller, mode="area")
    return x if smaller == size else F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def resize_mask(mask: np.ndarray, size: int | Sequence[int], num_classes: int | None = None, mode: str = "bilinear") -> np.ndarray:
    """A label map resized like probabilities: per-class indicator maps resized bilinearly
    (antialiased), then argmax (for two classes: foreground where its area fraction > 0.5).

    ``mode="any"`` (targets for a coarse model that only has to find objects): a shrunken pixel
    is foreground when any pixel it covers is, with the foreground class of largest area there,
    so objects smaller than one pixel at ``size`` are kept instead of averaged away."""
    mask = np.asarray(mask)
    k = int(num_classes or max(int(mask.max()) + 1, 2))
    onehot = torch.from_numpy((mask[None] == np.arange(k).reshape(-1, *([1] * mask.ndim))).astype(np.float32))[None]
    if mode != "any":
        return resize(onehot, size, mode)[0].argmax(0).numpy().astype(np.int64)
    fractions = resize(onehot, size, "bilinear")[0]
    target = _sizes(size, mask.ndim)
    if all(t <= s for t, s in zip(target, mask.shape)):
        pool = F.adaptive_max_pool2d if mask.ndim == 2 else F.adaptive_max_pool3d
        present = pool(onehot[:, 1:], target)[0] > 0
    else:
        present = resize(onehot[:, 1:], target, "nearest")[0] > 0
    fractions[1:] = torch.where(present, fractions[1:] + 1.0, fractions[1:])  # any foreground beats background
    return fractions.argmax(0).numpy().astype(np.int64)


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over K, or (1 - p, p) of a one-channel sigmoid output."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


# ------------------------------------------------------------------------------------- fusion


def fuse_crops(shape: Sequence[int], crops: Sequence[np.ndarray], boxes: Sequence[Box]) -> np.ndarray:
    """``(K, *shape)`` probabilities from per-crop probabilities ``(K, *box size)`` (already at
    their boxes' sizes): each pixel keeps the crop with the highest foreground probability
    ``1 - p0`` (the first crop wins ties); pixels outside every crop are background."""
    if not crops:
        out = np.zeros((2, *shape), np.float32)
        out[0] = 1.0
        return out
    k = crops[0].shape[0]
    out = np.zeros((k, *shape), np.float32)
    out[0] = 1.0
    best = np.full(tuple(shape), -1.0, np.float32)
    for p, box in zip(crops, boxes):
        index = box_slices(box)
        fg = 1.0 - p[0]
        region = best[index]
        win = fg > region
        region[win] = fg[win]
        out[(slice(None), *index)][:, win] = p[:, win]
    return out


# ---------------------------------------------------------------------------------- inference


def _device_of(predictor: Any, device: Any) -> torch.device:
    from medloop.app.engine.devices import choose_device

    if device is not None:
        return device if isinstance(device, torch.device) else choose_device(device)
    if isinstance(predictor, torch.nn.Module):
        param = next(itertools.chain(predictor.parameters(), predictor.buffers()), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def predict_resized(
    image: np.ndarray, predictor: Callable[[torch.Tensor], torch.Tensor], input_size: int | Sequence[int],
    device: Any = None, amp: bool | None = None, resize_mode: str = "bilinear",
) -> np.ndarray:
    """A "model at input size S": ``image`` ``(C, *spatial)`` resized to S, one forward pass,
    probabilities ``(K, *spatial)`` resized back (linear)."""
    probs = _predict_batch(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None], predictor, input_size, device, amp, resize_mode)
    return resize(probs, image.shape[1:], resize_mode)[0].numpy()


def _predict_batch(x: torch.Tensor, predictor, input_size, device, amp, resize_mode: str = "bilinear") -> torch.Tensor:
    """Probabilities ``(N, K, *S)`` on the CPU for a batch ``(N, C, *S')`` resized to S."""
    from medloop.app.engine.devices import autocast_for

    dev = _device_of(predictor, device)
    with torch.inference_mode():
        x = resize(x.to(dev, torch.float32), input_size, resize_mode)
        with autocast_for(dev, amp):
            logits = predictor(x)
        return to_probabilities(logits.float()).cpu()


@dataclass(frozen=True)
class CascadeParams:
    """How :func:`segment_cascade` runs.

    Attributes:
        input_size: the coarse model's input size S (an int for every axis).
        padding: k, in full-resolution pixels, around every object (None: S // 8).
        min_size: objects (and crops) narrower than this many pixels are dropped.
        batch_size: at most this many crops per call of the fine model (None: as many as fit
            ``batch_voxels``; 1: crop by crop). Every crop is resized to the fine input size
            once, and a call never takes more crops than fit ``batch_voxels`` (at least one).
        batch_voxels: input voxels (channels x fine input size x crops) per call of the fine
            model; None: :data:`BATCH_VOXELS` on an accelerator, :data:`CPU_BATCH_VOXELS` on
            the CPU. Batching never changes the result (eval-mode networks without
            batch-dependent layers give the same probabilities crop by crop).
        fine_input_size: the fine model's input size (None: ``input_size``).
        device, amp: where the models run and in what precision (None: the coarse model's
            device; see :func:`~medloop.app.engine.devices.autocast_for`).
        detect_threshold: crops go around the components where the coarse foreground
            probability (1 - background) reaches it; None (the paper) uses the coarse labels
            (argmax). A lower threshold finds objects the coarse model under-segments to nothing
            at size S; the fine model then decides what is really there.
        resize_mode: how images and probabilities are resized (see :func:`resize`).
    """

    input_size: int | Sequence[int]
    padding: int | None = None
    min_size: int = MIN_CROP
    batch_size: int | None = None
    fine_input_size: int | Sequence[int] | None = None
    device: Any = None
    amp: bool | None = None
    detect_threshold: float | None = None
    resize_mode: str = "bilinear"
    batch_voxels: int | None = None


BATCH_VOXELS = 2**20
"""Input voxels per fine-model call on an accelerator (CUDA, MPS): 64 crops of 128 x 128, 32 of
32^3 (the issue's budget; not yet timed on a GPU here: a GPU runs small calls far below its
capacity, so batching is where its cascade gains)."""

CPU_BATCH_VOXELS = 2**14
"""Input voxels per fine-model call on the CPU: one crop of 128 x 128, 4 of 16^3. On the 2-core
test machine, one thread, the benchmark's tiny U-Net (8-16-32 features): 2-D crops of 128 x 128
took 6.2, 6.5, 6.8, 7.1, 11.8 and 15.8 ms each in calls of 1, 2, 4, 8, 16 and 32 crops (larger
calls' activations outgrow the cache; the cascade at 2^16 voxels per call was 1.12x, at 2^20
3.0x the time of crop by crop), while 3-D crops of 16^3 cost 0.45x crop by crop's time in calls
of 2 to 16 (``benchmarks/bench_cascade_batched.py``)."""


def crops_per_call(params: CascadeParams, channels: int, fine_size: Sequence[int], device: torch.device) -> int:
    """How many crops one fine-model call takes: as many as fit the voxel budget (at least one),
    no more than ``params.batch_size``."""
    budget = params.batch_voxels
    if budget is None:
        budget = CPU_BATCH_VOXELS if device.type == "cpu" else BATCH_VOXELS
    fit = max(1, int(budget) // max(1, int(channels) * int(np.prod(fine_size))))
    if params.batch_size is None:
        return fit
    if int(params.batch_size) < 1:
        raise ValueError(f"cascade batch_size must be >= 1 crop (or None), got {params.batch_size}")
    return min(fit, int(params.batch_size))


def cascade_predict(
    image: np.ndarray,
    coarse: Callable[[torch.Tensor], torch.Tensor],
    fine: Callable[[torch.Tensor], torch.Tensor],
    input_size: int | Sequence[int],
    padding: int | None = None,
    min_size: int = MIN_CROP,
    batch_size: int | None = None,
    fine_input_size: int | Sequence[int] | None = None,
    fine_image: np.ndarray | None = None,
    device: Any = None,
    amp: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    detect_threshold: float | None = None,
    resize_mode: str = "bilinear",
) -> CascadeResult:
    """:func:`segment_cascade` with the fields of :class:`CascadeParams` as keyword arguments
    (the form the segmentation method and the tests call)."""
    params = CascadeParams(
        input_size, padding, min_size, batch_size, fine_input_size, device, amp, detect_threshold, resize_mode
    )
    return segment_cascade(image, coarse, fine, params, fine_image, progress, should_stop)


def segment_cascade(
    image: np.ndarray,
    coarse: Callable[[torch.Tensor], torch.Tensor],
    fine: Callable[[torch.Tensor], torch.Tensor],
    params: CascadeParams,
    fine_image: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CascadeResult:
    """Segment-then-segment of one image ``(C, H, W)`` or volume ``(C, D, H, W)`` (float32,
    normalised for the models).

    ``coarse`` / ``fine`` map ``(B, C, *S)`` tensors to logits ``(B, K, *S)`` (networks or
    any callables; 2-D or 3-D as the image); sizes, padding and batching come from ``params``
    (:class:`CascadeParams`). ``fine_image`` is the image as the fine model wants it normalised
    (default ``image``). ``progress(done, total)`` after the coarse pass and after every fine
    batch (total = 1 + batches); ``should_stop()`` is polled before each pass and raises
    :class:`~medloop.app.engine.jobs.JobCancelled`.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (3, 4):
        raise ValueError(f"cascade_predict needs a (C, H, W) image or (C, D, H, W) volume, got shape {image.shape}")
    fine_image = image if fine_image is None else np.asarray(fine_image, dtype=np.float32)
    shape = image.shape[1:]
    fine_size = _sizes(params.fine_input_size or params.input_size, len(shape))
    k = default_padding(params.input_size) if params.padding is None else int(params.padding)
    check_stop(should_stop)
    coarse_probs = _predict_batch(
        torch.from_numpy(image)[None], coarse, params.input_size, params.device, params.amp, params.resize_mode
    )[0]
    if params.detect_threshold is None:
        found = coarse_probs.argmax(0).numpy() > 0
    else:
        found = (1.0 - coarse_probs[0].numpy()) >= float(params.detect_threshold)
    boxes = crop_boxes(found, shape, k, params.min_size)
    crops = _fine_crops(fine_image, fine, boxes, fine_size, params, progress, should_stop)
    fused = fuse_crops(shape, crops, boxes)
    if not crops and coarse_probs.shape[0] != 2:  # no crop: background in the models' K classes
        fused = np.zeros((coarse_probs.shape[0], *shape), np.float32)
        fused[0] = 1.0
    return CascadeResult(probabilities=fused, boxes=boxes, coarse_probabilities=coarse_probs.numpy())


def _fine_crops(
    fine_image: np.ndarray,
    fine: Callable[[torch.Tensor], torch.Tensor],
    boxes: list[Box],
    fine_size: tuple[int, ...],
    params: CascadeParams,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list[np.ndarray]:
    """The fine model's probabilities of every crop, back at the crop's size: each crop resized
    to the fine input size once, :func:`crops_per_call` of them per call of the fine model
    (progress counts the coarse pass as done; ``should_stop`` is polled before every call)."""
    step = crops_per_call(params, fine_image.shape[0], fine_size, _device_of(fine, params.device))
    batches = [boxes[i : i + step] for i in range(0, len(boxes), step)]
    total = 1 + len(batches)
    if progress is not None:
        progress(1, total)
    crops: list[np.ndarray] = []
    source = torch.from_numpy(fine_image)
    mode = params.resize_mode
    for done, batch in enumerate(batches, start=2):
        check_stop(should_stop)
        x = torch.cat([resize(source[(None, slice(None), *box_slices(box))], fine_size, mode) for box in batch])
        probs = _predict_batch(x, fine, fine_size, params.device, params.amp, mode)
        crops.extend(_back_to_boxes(probs, batch, mode))
        if progress is not None:
            progress(done, total)
    return crops


def _back_to_boxes(probs: torch.Tensor, boxes: Sequence[Box], mode: str) -> list[np.ndarray]:
    """Probabilities ``(N, K, *S)`` of a batch resized back to their boxes' sizes, one resize per
    distinct size (resizing is per crop, so grouping them changes nothing)."""
    out: list[np.ndarray | None] = [None] * len(boxes)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, box in enumerate(boxes):
        groups.setdefault(box_shape(box), []).append(i)
    for shape, members in groups.items():
        resized = resize(probs[members], shape, mode).numpy()
        for j, i in enumerate(members):
            out[i] = resized[j]
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------- training


def jitter_box(box: Sequence[int], jitter: int, rng: np.random.Generator) -> Box:
    """``box`` with a uniform random whole number in ``[-jitter, jitter]`` added to each start
    (top, left) and each size (height, width; kept >= 1)."""
    box = tuple(int(v) for v in box)
    if jitter <= 0:
        return box
    n = len(box) // 2
    shifts = [int(v) for v in rng.integers(-jitter, jitter + 1, size=2 * n)]
    starts = tuple(box[i] + shifts[i] for i in range(n))
    sizes = [max(1, box[n + i] - box[i] + shifts[n + i]) for i in range(n)]
    return starts + tuple(a + size for a, size in zip(starts, sizes))


@dataclass(frozen=True)
class FineCropParams:
    """How :func:`fine_crop_pairs` cuts the fine model's training crops: ground-truth boxes
    jittered by up to ``jitter`` pixels (None: ``padding // 2``), padded by ``padding`` (None:
    S // 8), squared and shifted inside as at inference, at most ``per_image`` random ones per
    image (None: all); objects under ``min_size`` pixels are skipped; crops are resized to
    ``input_size`` S with ``resize_mode``."""

    input_size: int | Sequence[int]
    padding: int | None = None
    jitter: int | None = None
    per_image: int | None = None
    min_size: int = MIN_CROP
    resize_mode: str = "bilinear"


def fine_training_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    input_size: int | Sequence[int],
    padding: int | None = None,
    jitter: int | None = None,
    rng: int | np.random.Generator | None = None,
    per_image: int | None = None,
    min_size: int = MIN_CROP,
    resize_mode: str = "bilinear",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`fine_crop_pairs` with the fields of :class:`FineCropParams` as keyword arguments
    (the form the tests and the benchmark call)."""
    params = FineCropParams(input_size, padding, jitter, per_image, min_size, resize_mode)
    return fine_crop_pairs(images, masks, params, rng)


def fine_crop_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    params: FineCropParams,
    rng: int | np.random.Generator | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training pairs ``(image (C, *S) float32, label (*S) int64)`` for the fine model:
    ground-truth crops of every connected component of ``mask > 0``, cut as ``params`` says
    (:class:`FineCropParams`); an image without objects gives the whole image resized to S.
    ``rng`` (a seed or a generator) draws the jitter and the ``per_image`` choice."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pairs = []
    for image, mask in zip(images, masks):
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask)
        if image.ndim == mask.ndim:
            image = image[None]
        size = _sizes(params.input_size, mask.ndim)
        num_classes = max(int(mask.max()) + 1, 2)
        for box in _training_boxes(mask, params, gen):
            index = box_slices(box)
            crop = torch.from_numpy(np.ascontiguousarray(image[(slice(None), *index)]))[None]
            pairs.append((
                resize(crop, size, params.resize_mode)[0].numpy(),
                resize_mask(mask[index], size, num_classes, params.resize_mode),
            ))
    return pairs


def _training_boxes(mask: np.ndarray, params: FineCropParams, gen: np.random.Generator) -> list[Box]:
    """The crop boxes of one mask's objects (jittered, padded, squared, shifted inside), or the
    whole mask when it has none."""
    k = default_padding(params.input_size) if params.padding is None else int(params.padding)
    j = k // 2 if params.jitter is None else int(params.jitter)
    boxes = [b for b in component_boxes(mask) if min(box_shape(b)) >= params.min_size]
    if not boxes:
        return [(0,) * mask.ndim + tuple(mask.shape)]
    if params.per_image is not None and len(boxes) > params.per_image:
        boxes = [boxes[i] for i in sorted(gen.choice(len(boxes), params.per_image, replace=False))]
    return [expand_box(jitter_box(b, j, gen), mask.shape, k) for b in boxes]


@dataclass(frozen=True)
class StageTrainParams:
    """How :func:`train_coarse_model` / :func:`train_fine_model` train one model of a cascade:
    at input size S ``input_size`` with ``config`` (a
    :class:`~medloop.app.engine.train.TrainConfig`; its seed is replaced by ``seed``). The
    coarse model learns ``target`` masks (see :func:`coarse_training_pairs`); the fine model's
    crops use ``padding``, ``jitter`` and ``per_image`` (see :class:`FineCropParams`)."""

    input_size: int | Sequence[int]
    config: Any
    seed: int = 0
    target: str = "any"
    padding: int | None = None
    jitter: int | None = None
    per_image: int | None = None


def train_fine_model(
    network: torch.nn.Module,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    params: StageTrainParams,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Train a cascade's fine model: a copy of ``network`` (normally the coarse model — transfer
    learning, as the paper) on jittered ground-truth crops resized to S
    (:func:`fine_crop_pairs`). ``images`` ``(C, *spatial)`` normalised for the model,
    ``masks`` ``(*spatial)`` class indices (2-D or 3-D). Returns the :class:`~medloop.app.engine.train.TrainResult` (its
    ``model`` is the trained copy; ``network`` is not changed). Deterministic for a seed."""
    crops = FineCropParams(params.input_size, params.padding, params.jitter, params.per_image)
    pairs = fine_crop_pairs(images, masks, crops, rng=params.seed)
    return _train_copy(network, pairs, params.config, params.seed, progress, should_stop)


def coarse_training_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    input_size: int | Sequence[int],
    target: str = "any",
    resize_mode: str = "bilinear",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training pairs ``(image (C, *S) float32, label (*S) int64)`` for a cascade's coarse
    model: whole images resized to S, with masks resized by ``target``: ``"any"`` keeps every
    object however small (a pixel at S is foreground when any pixel it covers is: the coarse
    model only has to find objects, the fine model outlines them); ``"area"`` resizes them like
    probabilities (the paper's coarse model is its baseline at S)."""
    if target not in ("any", "area"):
        raise ValueError(f"coarse target must be 'any' or 'area', got {target!r}")
    pairs = []
    for image, mask in zip(images, masks):
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask)
        if image.ndim == mask.ndim:
            image = image[None]
        x = resize(torch.from_numpy(np.ascontiguousarray(image))[None], input_size, resize_mode)[0].numpy()
        y = resize_mask(mask, input_size, max(int(mask.max()) + 1, 2), "any" if target == "any" else resize_mode)
        pairs.append((x, y))
    return pairs


def train_coarse_model(
    network: torch.nn.Module,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    params: StageTrainParams,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Train a cascade's coarse model: a copy of ``network`` on whole images resized to S
    (:func:`coarse_training_pairs`, ``params.target`` masks). Inputs and result as
    :func:`train_fine_model`."""
    pairs = coarse_training_pairs(images, masks, params.input_size, params.target)
    return _train_copy(network, pairs, params.config, params.seed, progress, should_stop)


def _train_copy(network, pairs, config, seed, progress, should_stop) -> Any:
    from dataclasses import replace

    from medloop.app.engine.train import train_segmentation

    if not pairs:
        raise ValueError("no training images: give at least one image with its mask")
    return train_segmentation(
        network, [(x, y, None) for x, y in pairs], None, replace(config, seed=int(seed)),
        progress=progress, should_stop=should_stop, copy_model=True, raise_on_stop=True,
    )
