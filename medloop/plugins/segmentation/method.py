"""Qt-free segmentation: image in, labels (+ probabilities) out on the image's exact grid.

The panel and the CLI both call :func:`segment`, so they give identical results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medloop.app.io.image import MedImage
from medloop.models.provenance import model_provenance
from medloop.models.inputs import (  # re-exported: the segmentation API has always offered them
    CascadeInputError,
    SegmentationInputError,
    check_input,
    network_input,
)
from medloop.plugins.segmentation import upscale


@dataclass(frozen=True)
class SegmentParams:
    """What to run and how; ``None`` takes the model card's default."""

    model: str
    device: str = "auto"
    roi_size: tuple[int, ...] | None = None
    overlap: float | None = None
    batch_size: int = 2
    amp: bool | None = None
    probabilities: bool = False
    models_dir: Path | None = None
    #: Output upscaling factors per array axis of the image (seed 000), e.g. (3, 1, 1) for z x3.
    upscale: tuple[int, ...] | None = None
    upscale_align: str = "centre"
    upscale_overlap: bool = False
    upscale_fusion: str = "mean"
    upscale_order: int = 3  # image interpolation of the shifted copies: 3 cubic B-spline, 1 linear
    #: Segment-then-segment (seed 002): name of the fine model; ``model`` is then the coarse one.
    cascade: str | None = None
    cascade_padding: int | None = None  # k in image pixels; None: S // 8
    num_threads: int | None = None  # torch CPU threads; None: every core (the GUI passes one fewer)
    #: fp32 | bf16 | auto: bf16 autocast where the hardware runs it natively and the model's card
    #: test input keeps >= 99.9 % of labels (:mod:`medloop.app.engine.precision`); ``amp`` overrides.
    precision: str = "auto"


@dataclass
class SegmentResult:
    labels: MedImage
    probabilities: MedImage | None
    provenance: dict[str, Any] = field(default_factory=dict)


def segment(
    image: MedImage,
    params: SegmentParams,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    network: Any = None,
    fine_network: Any = None,
) -> SegmentResult:
    """Segment ``image`` with ``params.model``; labels come back on ``image``'s exact grid.

    ``network`` lets a caller reuse an already-loaded network of the same model (with
    ``params.cascade``: the coarse one; ``fine_network`` the fine one). A card with
    ``inference.input_size`` [S, S] is run on the whole image resized to S x S (no tiling).
    Torch runs with ``params.num_threads`` CPU threads (None: every core, see
    :func:`~medloop.app.engine.devices.default_cpu_threads`) in ``params.precision`` (recorded
    in the provenance). Raises ``JobCancelled`` (from the engine) when ``should_stop()`` turns true.
    """
    from medloop.app.engine.devices import torch_threads

    with torch_threads(params.num_threads):
        network, params, chosen = _with_precision(params, network)
        result = _segment(image, params, progress, should_stop, network, fine_network)
    result.provenance.update(chosen.provenance())
    return result


def _with_precision(params: SegmentParams, network: Any) -> tuple[Any, SegmentParams, Any]:
    """The network (built here when not given), ``params`` with ``amp`` decided, and the choice."""
    from dataclasses import replace

    from medloop.app.engine.devices import choose_device
    from medloop.app.engine.precision import Precision, check_precision, choose_precision, model_check
    from medloop.models.registry import build_model, get_model

    check_precision(params.precision)
    if params.amp is not None:
        return network, params, Precision("bf16" if params.amp else "fp32", bool(params.amp), "amp given")
    entry = get_model(params.model, params.models_dir)
    device = choose_device(params.device)
    if network is None:
        network = build_model(entry, device)
    chosen = choose_precision(params.precision, device, network, model_check(entry))
    return network, replace(params, amp=chosen.amp), chosen


def _segment(image, params, progress, should_stop, network, fine_network) -> SegmentResult:
    from medloop.app.engine.devices import channels_last_on_cpu, choose_device
    from medloop.app.engine.resample import probabilities_to_grid, to_model_grid
    from medloop.app.engine.tiling import TilingParams, predict_labels, tile_grid, tiled_inference
    from medloop.models.registry import build_model, get_model

    if params.cascade is not None:
        return _segment_cascade(image, params, progress, should_stop, network, fine_network)
    entry = get_model(params.model, params.models_dir)
    card = entry.card
    check_input(image, card)
    if "input_size" in card.inference:
        return _segment_resized(image, params, card, entry, progress, should_stop, network)
    device = choose_device(params.device)
    started = time.perf_counter()
    if network is None:
        network = build_model(entry, device)
    factors = _upscale_factors(image, params)
    slices = image.ndim == 3 and card.spatial_dims == 2
    grid = to_model_grid(_scalar(image), _model_spacing(card, image, slices), card.orientation)
    inputs = network_input(grid, card)
    floor = _signal_floor(card, inputs)  # measured once on the whole input (one copy), before tiling
    empty = _empty_slices(inputs, floor, card.slice_axis) if slices and floor is not None else None
    grid_factors = upscale.model_axis_factors(image, grid, factors)
    offsets = upscale.shift_offsets(grid_factors, params.upscale_align, params.upscale_overlap)
    copies = upscale.shifted_copies(inputs, offsets, params.upscale_order)  # (S, C, *spatial); S = 1 without upscaling
    inputs = copies.reshape(-1, *copies.shape[2:])
    inference = card.inference
    roi = tuple(params.roi_size or inference.get("roi_size") or grid.shape[: grid.ndim])
    overlap = params.overlap if params.overlap is not None else float(inference.get("overlap", 0.25))
    predictor, divisor = network, int(getattr(network, "divisible_by", 1))
    if slices:
        roi_2d = tuple(-(-r // divisor) * divisor for r in roi[-2:])
        inputs, predictor, roi = _slice_by_slice(inputs, network, roi_2d, card.slice_axis)
        divisor = 1  # the 2-D tile is already divisible; the slice axis stays 1 thick
    gate = None if floor is None else _gated(predictor, floor, card)
    predictor = gate or predictor
    tile = tile_grid(inputs.shape[1:], roi, overlap, divisor).roi  # the tile sliding_window_inference will use
    per_call = upscale.tiles_per_call(device, params.batch_size, int(np.prod(tile)))
    with channels_last_on_cpu(network):
        tiling = TilingParams(
            roi, overlap, batch_size=params.batch_size, device=device, amp=params.amp, divisible_by=divisor,
            pad_mode=str(inference.get("pad_mode", "constant")),
        )
        stacked = upscale.stacked_predictor(predictor, len(offsets), per_call)  # softmax per copy
        probs = tiled_inference(inputs, stacked, tiling, progress=progress, should_stop=should_stop)
    if slices:
        probs = _background_where_empty(np.moveaxis(probs, 1, 1 + card.slice_axis), len(offsets), empty, card.slice_axis)
    probs = upscale.fuse(probs.reshape(len(offsets), -1, *probs.shape[1:]), offsets, grid_factors, params.upscale_fusion)
    target = upscale.fine_grid(image, factors, params.upscale_align)
    probs = probabilities_to_grid(probs, upscale.fine_grid(grid, grid_factors, params.upscale_align), target)
    labels = predict_labels(probs)
    provenance = model_provenance(card, device, started, roi_size=list(roi), overlap=overlap)
    provenance["signal_gate"] = gate.provenance() if gate is not None else {"on": False}
    if any(k > 1 for k in factors):
        provenance["upscale"] = {
            "factors": list(factors), "align": params.upscale_align, "overlap": params.upscale_overlap,
            "fusion": params.upscale_fusion, "order": params.upscale_order, "copies": len(offsets),
        }
    geometry_only = _scalar(target)
    return SegmentResult(
        labels=geometry_only.with_array(labels, metadata={"provenance": provenance, "classes": card.classes}),
        probabilities=(
            geometry_only.with_array(np.moveaxis(probs, 0, -1), channel_axis=True) if params.probabilities else None
        ),
        provenance=provenance,
    )


def input_size_of(card) -> tuple[int, ...] | None:
    """The card's ``inference.input_size`` ((S, S), or (S, S, S) for a 3-D model): the model
    sees the whole image resized to it."""
    size = card.inference.get("input_size")
    if size is None:
        return None
    dims = card.spatial_dims
    size = [int(v) for v in (size if isinstance(size, (list, tuple)) else [size])]
    if len(size) == 1:
        size = size * dims
    if len(size) != dims or min(size) < 1:
        shape = ", ".join(["S"] * dims)
        raise SegmentationInputError(f"model {card.name}: inference.input_size must be [{shape}] ({dims} positive whole numbers), got {card.inference['input_size']}")
    return tuple(size)


def _check_resized(image: MedImage, params: SegmentParams, card, what: str) -> None:
    where = image.path or "the image"
    if image.ndim != card.spatial_dims:
        raise SegmentationInputError(
            f"{what} {card.name} segments whole {card.spatial_dims}-D images resized to its input size, but {where} "
            f"is {image.ndim}-D; pick a model for this kind of image"
        )
    if params.upscale is not None and any(int(k) > 1 for k in params.upscale):
        raise SegmentationInputError(
            f"{what} {card.name} predicts at its input size and resizes back; --upscale does not apply, leave it out"
        )


def _result(image: MedImage, probs: np.ndarray, params: SegmentParams, provenance: dict[str, Any], classes) -> SegmentResult:
    from medloop.app.engine.tiling import predict_labels

    geometry_only = _scalar(image)
    labels = predict_labels(probs)
    return SegmentResult(
        labels=geometry_only.with_array(labels, metadata={"provenance": provenance, "classes": classes}),
        probabilities=(
            geometry_only.with_array(np.moveaxis(probs, 0, -1), channel_axis=True) if params.probabilities else None
        ),
        provenance=provenance,
    )


def _segment_resized(image, params, card, entry, progress, should_stop, network) -> SegmentResult:
    """A model at input size S (card ``inference.input_size``): the whole image resized to
    S x S (x S for a volume; antialiased), one forward pass, probabilities resized back (linear)."""
    from medloop.app.engine.devices import channels_last_on_cpu, choose_device
    from medloop.app.engine.jobs import check_stop
    from medloop.models.registry import build_model
    from medloop.plugins.segmentation.cascade import predict_resized

    _check_resized(image, params, card, "model")
    size = input_size_of(card)
    device = choose_device(params.device)
    started = time.perf_counter()
    if network is None:
        network = build_model(entry, device)
    check_stop(should_stop)
    x = network_input(_scalar(image), card)
    floor = _signal_floor(card, x)
    gate = None if floor is None else _gated(network, floor, card)  # a whole image without signal: background
    with channels_last_on_cpu(network):
        probs = predict_resized(x, gate or network, size, device=device, amp=params.amp)
    if progress is not None:
        progress(1, 1)
    provenance = model_provenance(card, device, started, input_size=list(size))
    provenance["signal_gate"] = gate.provenance() if gate is not None else {"on": False}
    return _result(image, probs, params, provenance, card.classes)


def _segment_cascade(image, params, progress, should_stop, network, fine_network) -> SegmentResult:
    """Segment-then-segment (seed 002): ``params.model`` coarse at its input size S, then
    ``params.cascade`` on every crop (see :mod:`medloop.plugins.segmentation.cascade`)."""
    from medloop.app.engine.devices import channels_last_on_cpu, choose_device
    from medloop.models.registry import build_model, get_model
    from medloop.plugins.segmentation.cascade import CascadeParams, default_padding, segment_cascade

    coarse_entry = get_model(params.model, params.models_dir)
    fine_entry = get_model(params.cascade, params.models_dir)
    coarse, fine = coarse_entry.card, fine_entry.card
    where = image.path or "the image"
    for card, role in ((coarse, "coarse"), (fine, "fine")):
        if card.spatial_dims != image.ndim:
            raise CascadeInputError(
                f"the {role} model {card.name} segments {card.spatial_dims}-D images but {where} is {image.ndim}-D; "
                f"--cascade needs two {image.ndim}-D models (or segment it without --cascade)"
            )
        check_input(image, card)
    if params.upscale is not None and any(int(k) > 1 for k in params.upscale):
        raise CascadeInputError("--cascade and --upscale cannot be combined; leave one out")
    size = input_size_of(coarse)
    if size is None:
        raise CascadeInputError(
            f"the coarse model {coarse.name} has no inference.input_size in its card; --model must be a model "
            f"trained on whole images resized to S x S (card inference.input_size: [{', '.join(['S'] * image.ndim)}])"
        )
    if coarse.classes != fine.classes:
        raise CascadeInputError(
            f"the coarse model {coarse.name} and the fine model {fine.name} segment different classes "
            f"({coarse.classes} vs {fine.classes}); pick a fine model trained for the coarse model's classes"
        )
    fine_size = input_size_of(fine) or size
    padding = default_padding(size) if params.cascade_padding is None else int(params.cascade_padding)
    if padding < 0:
        raise CascadeInputError(f"cascade padding must be >= 0 pixels, got {padding}")
    device = choose_device(params.device)
    started = time.perf_counter()
    if network is None:
        network = build_model(coarse_entry, device)
    if fine_network is None:
        fine_network = build_model(fine_entry, device)
    scalar = _scalar(image)
    with channels_last_on_cpu(network, fine_network):
        # crops per fine-model call: as many as fit the device's voxel budget (cascade.crops_per_call)
        run = CascadeParams(size, padding=padding, fine_input_size=fine_size, device=device, amp=params.amp)
        result = segment_cascade(
            network_input(scalar, coarse), network, fine_network, run, fine_image=network_input(scalar, fine),
            progress=progress, should_stop=should_stop,
        )
    provenance = model_provenance(coarse, device, started, input_size=list(size), cascade={
            "coarse": {"model": coarse.name, "version": coarse.version, "weights_sha256": coarse.weights_sha256},
            "fine": {"model": fine.name, "version": fine.version, "weights_sha256": fine.weights_sha256},
            "input_size": list(size), "fine_input_size": list(fine_size), "padding": padding,
            "crops": len(result.boxes), "boxes": [list(b) for b in result.boxes],
        })
    return _result(image, result.probabilities, params, provenance, coarse.classes)


def segment_slide_file(
    image: MedImage,
    params: SegmentParams,
    out_path: Path,
    level: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Segment one level of a whole slide into a tiled pyramidal label TIFF, tile by tile
    (memory stays bounded whatever the slide size), with ``params.num_threads`` and
    ``params.precision`` as :func:`segment` uses them. Returns the provenance."""
    from medloop.app.engine.devices import channels_last_on_cpu, choose_device, torch_threads
    from medloop.app.engine.tiling import SlideParams, TilingParams, segment_level
    from medloop.models.registry import build_model, get_model

    entry = get_model(params.model, params.models_dir)
    card = entry.card
    where = image.path or "the slide"
    if card.spatial_dims != 2 or card.in_channels != 3:
        raise SegmentationInputError(
            f"model {card.name} does not take RGB 2-D images, so it cannot segment slide {where}; "
            "pick a slide (RGB) model"
        )
    if Path(out_path).suffix.lower() not in (".tif", ".tiff"):
        raise SegmentationInputError(f"slide labels are written as a tiled pyramidal TIFF; name the output .tif, not {out_path}")
    device = choose_device(params.device)
    started = time.perf_counter()
    factor = float(image.metadata.get("level_downsamples", (1.0,) * (level + 1))[level])
    roi = tuple(params.roi_size or card.inference.get("roi_size") or (512, 512))
    overlap = params.overlap if params.overlap is not None else float(card.inference.get("overlap", 0.125))
    with torch_threads(params.num_threads):
        network, params, chosen = _with_precision(params, build_model(entry, device))
        with channels_last_on_cpu(network):
            tiling = TilingParams(
                roi, overlap, batch_size=params.batch_size, device=device, amp=params.amp, activation="softmax",
                divisible_by=int(getattr(network, "divisible_by", 1)),
            )
            segment_level(
                image.pyramid[level] if image.pyramid else image.array, network, out_path,
                tuple(s * factor for s in image.spacing), SlideParams(tiling, num_classes=len(card.classes)),
                progress=progress, should_stop=should_stop,
            )
    provenance = model_provenance(card, device, started, roi_size=list(roi), overlap=overlap, level=level)
    provenance.update(chosen.provenance())
    return provenance


def _upscale_factors(image: MedImage, params: SegmentParams) -> tuple[int, ...]:
    factors = tuple(int(k) for k in (params.upscale or (1,) * image.ndim))
    if len(factors) != image.ndim or any(k < 1 for k in factors):
        raise upscale.UpscaleError(
            f"upscale factors {factors} do not fit a {image.ndim}-D image; give one whole number >= 1 per axis"
        )
    return factors


def _model_spacing(card, image: MedImage, slices: bool) -> tuple[float | None, ...] | None:
    """The model's grid spacing for ``image``, in ITK (x, y[, z]) order.

    A 2-D model run slice by slice keeps the volume's own slice spacing (its slices are segmented
    independently: resampling between them is the job of output upscaling, not of the model
    grid). A 2-D image given to a slice model (a PNG, one DICOM slice) takes the model's in-plane
    spacing; an image without physical units (pixels) keeps its own grid.
    """
    spacing = card.spacing
    if spacing is None or image.unit not in ("mm", "um"):
        return None if image.unit not in ("mm", "um") else spacing
    if len(spacing) != 3 or card.slice_axis is None:
        return spacing
    out: list[float | None] = list(spacing)
    if slices:
        out[2 - card.slice_axis] = None  # ITK (x, y, z) order
        return tuple(out)
    if image.ndim == 2:
        del out[2 - card.slice_axis]  # the slice plane's two axes
        return tuple(out)
    return spacing


def _signal_floor(card, inputs: np.ndarray):
    """The signal floor of ``inputs`` (the whole normalised network input, ``(C, *spatial)``),
    so that tiles without signal get background without a forward pass (issue #18 §3); None
    when the card switches the gate off (``inference.signal_gate: false``)."""
    from medloop.app.engine.signal import signal_floor

    if not bool(card.inference.get("signal_gate", True)):
        return None
    return signal_floor(inputs)


def _empty_slices(inputs: np.ndarray, floor, axis: int) -> np.ndarray:
    """Which slices along ``axis`` of the normalised input carry no signal, judged on the slice
    itself: a tile also holds its padding, and a constant slice padded with zeros has a step
    the tile gate sees as signal (and a network as an outline)."""
    import torch

    from medloop.app.engine.signal import signal_free

    units = np.ascontiguousarray(np.moveaxis(inputs, 1 + axis, 0))  # (slices, C, h, w)
    return signal_free(torch.from_numpy(units), floor).numpy()


def _background_where_empty(probs: np.ndarray, copies: int, empty: np.ndarray | None, axis: int) -> np.ndarray:
    """``probs`` ``(copies x K, *spatial)`` with sure background in the ``empty`` slices."""
    if empty is None or not empty.any():
        return probs
    probs = np.ascontiguousarray(probs)  # so that the reshape below is a view
    view = probs.reshape(copies, -1, *probs.shape[1:])
    where = (slice(None),) * axis + (empty,)
    view[(slice(None), slice(None), *where)] = 0.0
    view[(slice(None), 0, *where)] = 1.0
    return probs


def _gated(predictor, floor, card):
    from medloop.app.engine.signal import gated_predictor

    # The network's output channels (1 for a binary logit), not the card's class count.
    out_channels = card.raw.get("architecture", {}).get("kwargs", {}).get("out_channels")
    return gated_predictor(predictor, floor, num_classes_hint=out_channels)


def _slice_by_slice(inputs: np.ndarray, network, roi_2d: tuple[int, ...], axis: int):
    """Run a 2-D network over a volume as a 3-D sliding window one slice thick: the sliced axis
    moves first, and each (1, h, w) tile goes through the network as a 2-D image."""

    def predictor(batch):
        b, c, _, h, w = batch.shape
        return network(batch[:, :, 0]).reshape(b, -1, 1, h, w)

    moved = np.ascontiguousarray(np.moveaxis(inputs, 1 + axis, 1))
    return moved, predictor, (1, *roi_2d)


def _scalar(image: MedImage) -> MedImage:
    """Single-channel images lose their channel axis; RGB stays as it is."""
    if image.channel_axis and image.shape[-1] == 1:
        return image.with_array(np.asarray(image.array)[..., 0], channel_axis=False)
    return image


def segment_with_model(
    image: MedImage,
    model: str,
    *,
    device: str = "auto",
    models_dir: Path | None = None,
    network: Any = None,
    probabilities: bool = True,
) -> SegmentResult:
    """The ``segment-image`` service other plugins use (Review): ``image`` through ``model`` on
    its own grid, with per-class probabilities."""
    params = SegmentParams(model=model, device=device, probabilities=probabilities, models_dir=models_dir)
    return segment(image, params, network=network)
