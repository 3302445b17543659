"""Qt-free retraining core for stroke corrections: a live head and a full fine-tune (spec §0, §1).

Live mode. The network's last decoder feature map (the input of its final 1x1 output conv) is
computed ONCE per image (:func:`live_features`, a forward pre-hook on the output conv; the network
is not modified). Each stroke update then trains only a small 1x1 head (:class:`LiveHead`) on the
annotated pixels with the sparse, balanced stroke loss (:func:`fit_head`) and re-predicts the
whole image from the cached features (:func:`predict_with_head`). The head starts as a copy of the
model's output conv, so before any training its prediction equals the model's.
:class:`LiveSession` bundles this and warm-starts every update from the previous head.

Full fine-tune. :func:`fine_tune` trains a copy of the whole network on the one training loop:
the segmentation step (:func:`~medloop.app.engine.train.train_segmentation`, ``copy_model=True``:
the caller's network is never changed, also on cancel or error) with the stroke loss, and
:class:`AnchoredStep` adding the pull towards the starting model, on the strokes, holding out a
seeded part of the annotation (whole connected stroke components, per class) for validation and
early stopping. Its settings are a :class:`FineTuneParams`.

Labels follow the paint convention throughout: 0 = unlabeled, k + 1 = class k. Predicted label
maps hold class indices 0..K-1 (like :func:`~medloop.app.engine.train.predict_whole`); add 1 for
a paint-convention layer.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medloop.app.engine.train import SegmentationStep, predict_whole
from medloop.app.errors import MedloopError
from medloop.plugins.correction.sparse import BALANCING, sparse_loss, validate_strokes
from medloop.plugins.correction.unannotated import DEFAULT_PSEUDO_WEIGHT, UNANNOTATED, with_pseudo
from medloop.plugins.correction.weaklabels import AnnotationError

__all__ = [
    "AnchoredLoss",
    "AnchoredStep",
    "FineTuneParams",
    "FineTuneResult",
    "LiveHead",
    "LiveSession",
    "default_fine_tune_config",
    "fine_tune",
    "fit_head",
    "live_features",
    "output_conv",
    "predict_with_head",
    "split_strokes",
]

_CONVS = (nn.Conv2d, nn.Conv3d)
#: Weight of the pull towards the starting model's prediction on unannotated pixels (AnchoredLoss).
DEFAULT_ANCHOR = 0.5


# ------------------------------------------------------------------------------- live features


def output_conv(network: nn.Module) -> nn.Conv2d | nn.Conv3d:
    """The network's final 1x1 output convolution: ``network.head`` (U-Net) or else its last
    convolution, which must then be 1x1 and ungrouped."""
    head = getattr(network, "head", None)
    conv = head if isinstance(head, _CONVS) else None
    if conv is None:
        for m in network.modules():
            if isinstance(m, _CONVS):
                conv = m
    if conv is None or any(k != 1 for k in conv.kernel_size) or conv.groups != 1 or any(s != 1 for s in conv.stride):
        raise MedloopError(
            f"{type(network).__name__} has no final 1x1 output convolution; live retraining needs one "
            "(use full fine-tuning instead)"
        )
    return conv


def _as_image(image: np.ndarray | torch.Tensor, spatial_dims: int) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == spatial_dims:
        a = a[None]
    if a.ndim != spatial_dims + 1:
        raise MedloopError(
            f"image must be (channels, {spatial_dims} spatial axes) for this {spatial_dims}-D model, got shape {a.shape}"
        )
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise AnnotationError("the image has NaN or infinite values; fix or mask them first")
    return a


def live_features(
    network: nn.Module,
    image: np.ndarray | torch.Tensor,
    roi_size: int | Sequence[int] | None = None,
    overlap: float = 0.25,
) -> torch.Tensor:
    """The input of the network's output conv for ``image`` (C, *spatial): ``(F, *spatial)`` float32 on the CPU.

    ``roi_size=None``: one whole-image forward pass (edge-padded to the network's
    ``divisible_by``); otherwise tiled with
    :func:`~medloop.app.engine.tiling.sliding_window_inference` (Gaussian-blended features), for
    images too large for one pass (GroupNorm statistics are then per tile, so tiled features
    differ somewhat from one-pass ones). The network's weights and train/eval mode are unchanged.
    """
    conv = output_conv(network)
    spatial_dims = 2 if isinstance(conv, nn.Conv2d) else 3
    img = _as_image(image, spatial_dims)
    divisible_by = int(getattr(network, "divisible_by", 1) or 1)
    captured: list[torch.Tensor] = []
    hook = conv.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    device = next(iter(network.parameters())).device
    was_training = network.training
    network.eval()

    def features_of(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        network(x)
        return captured[-1].float()

    try:
        with torch.inference_mode():
            if roi_size is None:
                spatial = img.shape[1:]
                pad = [(0, 0)] + [(0, (-n) % divisible_by) for n in spatial]
                padded = np.pad(img, pad, mode="edge") if any(p for _, p in pad) else img
                feats = features_of(torch.from_numpy(np.ascontiguousarray(padded)).unsqueeze(0).to(device))[0]
                feats = feats[(slice(None),) + tuple(slice(0, n) for n in spatial)]
                out = feats.cpu().contiguous()
            else:
                from medloop.app.engine.tiling import TilingParams, tiled_inference

                tiling = TilingParams(roi_size, overlap, device=device, divisible_by=divisible_by, amp=False)
                out = torch.from_numpy(tiled_inference(img, features_of, tiling))
    finally:
        hook.remove()
        network.train(was_training)
    return out.clone()  # outside inference mode: a normal tensor autograd may use


# ----------------------------------------------------------------------------------- the head


class LiveHead(nn.Module):
    """A 1x1 conv as a linear map over feature channels: ``weight`` (K, F), ``bias`` (K).

    K = the output conv's channels (1 = one binary logit: classes background/foreground).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        w = weight.detach().float().reshape(weight.shape[0], -1).clone()
        b = torch.zeros(w.shape[0]) if bias is None else bias.detach().float().reshape(-1).clone()
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    @classmethod
    def from_conv(cls, conv: nn.Module) -> LiveHead:
        """A head equal to the 1x1 conv ``conv`` (weights copied; ``conv`` stays untouched)."""
        return cls(conv.weight.detach().cpu(), None if conv.bias is None else conv.bias.detach().cpu())

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_classes(self) -> int:
        """Classes scored: the output channels, or 2 for a single binary logit."""
        return max(2, self.out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, *s)`` from features ``(F, *s)``, or ``(K, n)`` from ``(F, n)``."""
        flat = features.reshape(features.shape[0], -1)
        return (self.weight @ flat + self.bias[:, None]).reshape(self.out_channels, *features.shape[1:])

    def to_conv(self, spatial_dims: int = 2) -> nn.Module:
        """The head as a ``Conv2d``/``Conv3d`` 1x1 (e.g. to put into a copy of the network)."""
        conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(self.weight.shape[1], self.out_channels, 1)
        with torch.no_grad():
            conv.weight.copy_(self.weight.reshape(conv.weight.shape))
            conv.bias.copy_(self.bias)
        return conv


def _check_strokes(strokes: np.ndarray | torch.Tensor, spatial: tuple[int, ...], num_classes: int) -> np.ndarray:
    s = strokes.detach().cpu().numpy() if isinstance(strokes, torch.Tensor) else np.asarray(strokes)
    if tuple(s.shape) != tuple(spatial):
        raise AnnotationError(f"annotation shape {s.shape} does not match the image's spatial shape {tuple(spatial)}")
    validate_strokes(s, num_classes, fine_tune=True)  # raises on bad ids / empty; warns on one class
    return s.astype(np.int64)


def fit_head(
    features: torch.Tensor,
    strokes: np.ndarray | torch.Tensor,
    num_classes: int | None = None,
    steps: int = 60,
    lr: float = 0.02,
    mode: str = "mini-batch",
    init: nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LiveHead:
    """Train a 1x1 head on the annotated pixels of ``strokes`` (paint convention) only.

    ``features`` (F, *spatial) from :func:`live_features`; ``init``: a :class:`LiveHead` or the
    model's 1x1 output conv to start from (a copy is trained; ``init`` is unchanged); None: zeros
    with ``num_classes`` outputs. Full-batch Adam for ``steps`` steps on the balanced sparse
    cross-entropy (:func:`~medloop.plugins.correction.sparse.sparse_loss`, ``mode`` one of
    ``none``/``instance``/``mini-batch``/``auto``). ``should_stop()`` is polled each step.
    """
    if mode not in BALANCING:
        raise ValueError(f"mode must be one of {', '.join(BALANCING)}; got {mode!r}")
    if init is None:
        if num_classes is None:
            raise ValueError("give num_classes or an init head")
        head = LiveHead(torch.zeros(num_classes, features.shape[0]))
    elif isinstance(init, LiveHead):
        head = LiveHead(init.weight, init.bias)
    else:
        head = LiveHead.from_conv(init)
    if head.weight.shape[1] != features.shape[0]:
        raise MedloopError(f"head expects {head.weight.shape[1]} feature channels, the features have {features.shape[0]}")
    k = head.num_classes
    if num_classes is not None and num_classes != k:
        raise MedloopError(f"num_classes {num_classes} does not match the head's {k} classes")
    s = _check_strokes(strokes, tuple(features.shape[1:]), k)
    flat = np.flatnonzero(s.ravel() > 0)
    x = features.reshape(features.shape[0], -1)[:, torch.from_numpy(flat)].float()  # (F, n) annotated only
    labels = torch.from_numpy(s.ravel()[flat])[None]  # (1, n)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(int(steps)):
            if should_stop is not None and should_stop():
                break
            opt.zero_grad(set_to_none=True)
            loss = sparse_loss(head(x)[None], labels, mode)
            if loss is None:  # cannot happen after validate_strokes; kept for safety
                break
            loss.backward()
            opt.step()
    head.last_loss = float(loss.detach()) if steps else float("nan")  # type: ignore[attr-defined]
    return head.requires_grad_(False).eval()


def predict_with_head(features: torch.Tensor, head: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probs)``: class indices (*spatial) int64 0..K-1 and probabilities (K, *spatial)
    float32 (a single binary logit gives K = 2: background, foreground)."""
    if not isinstance(head, LiveHead):
        head = LiveHead.from_conv(head)
    with torch.inference_mode():
        logits = head(features.float())
        if logits.shape[0] == 1:
            p = torch.sigmoid(logits[0])
            probs = torch.stack([1 - p, p])
        else:
            probs = torch.softmax(logits, dim=0)
        labels = probs.argmax(0)
    return labels.numpy().astype(np.int64), probs.numpy().astype(np.float32, copy=False)


class LiveSession:
    """Live correction of one image: features once, then cheap head updates per stroke change.

    >>> session = LiveSession(network, image)        # image (C, *spatial)
    >>> labels = session.update(strokes)              # class indices 0..K-1

    The first :meth:`update` (or :meth:`prepare`) computes the features; later updates only fit
    the head, warm-started from the previous one. ``network`` is never changed.
    """

    def __init__(
        self,
        network: nn.Module,
        image: np.ndarray | torch.Tensor,
        steps: int = 60,
        lr: float = 0.02,
        mode: str = "mini-batch",
        roi_size: int | Sequence[int] | None = None,
        warm_steps: int | None = None,
    ):
        self.network = network
        conv = output_conv(network)
        self.spatial_dims = 2 if isinstance(conv, nn.Conv2d) else 3
        self.image = _as_image(image, self.spatial_dims)
        self.base_head = LiveHead.from_conv(conv)
        self.head = self.base_head
        self.steps, self.lr, self.mode, self.roi_size = int(steps), float(lr), mode, roi_size
        self.warm_steps = self.steps if warm_steps is None else int(warm_steps)
        self._features: torch.Tensor | None = None
        self.labels: np.ndarray | None = None
        self.probs: np.ndarray | None = None
        self.updates = 0
        self.timings: list[float] = []  # seconds per update()

    @property
    def num_classes(self) -> int:
        return self.base_head.num_classes

    @property
    def features(self) -> torch.Tensor:
        return self.prepare()

    def prepare(self) -> torch.Tensor:
        """Compute (once) and return the cached features."""
        if self._features is None:
            self._features = live_features(self.network, self.image, self.roi_size)
        return self._features

    def warm_up(self) -> None:
        """Compute the features and run one throwaway two-step head fit, so that the first
        stroke pays for neither (the first backward pass initialises autograd and oneDNN's
        kernels). The session's head and labels are unchanged."""
        features = self.prepare()
        dummy = np.zeros(tuple(features.shape[-self.spatial_dims:]), np.int64)
        dummy.flat[0], dummy.flat[-1] = 1, min(2, self.num_classes)  # two classes painted, one voxel each
        fit_head(features, dummy, self.num_classes, 2, self.lr, self.mode, init=self.base_head)

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, probs)`` of the current head (the model's own before any update)."""
        return predict_with_head(self.features, self.head)

    def update(self, strokes: np.ndarray | torch.Tensor, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Fit the head to ``strokes`` (paint convention, the image's spatial shape) and return
        the new label map; ``probs`` and ``head`` are updated too."""
        t0 = time.perf_counter()
        steps = self.steps if self.updates == 0 else self.warm_steps
        self.head = fit_head(
            self.features, strokes, self.num_classes, steps, self.lr, self.mode, init=self.head, should_stop=should_stop
        )
        self.labels, self.probs = predict_with_head(self.features, self.head)
        self.updates += 1
        self.timings.append(time.perf_counter() - t0)
        return self.labels

    def reset(self) -> None:
        """Back to the model's own output conv (features stay cached)."""
        self.head, self.updates, self.labels, self.probs = self.base_head, 0, None, None

    def network_with_head(self) -> nn.Module:
        """A deep copy of the network whose output conv is the current head (the original is unchanged)."""
        net = copy.deepcopy(self.network)
        conv = output_conv(net)
        with torch.no_grad():
            conv.weight.copy_(self.head.weight.reshape(conv.weight.shape).to(conv.weight))
            if conv.bias is not None:
                conv.bias.copy_(self.head.bias.to(conv.bias))
        return net


# ---------------------------------------------------------------------------------- fine-tune


def split_strokes(
    strokes: np.ndarray, validation_fraction: float = 0.2, rng: int | Sequence[int] | np.random.Generator | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` stroke maps: about ``validation_fraction`` of each class's
    connected components go to validation, always leaving at least one component per class for
    training (a class drawn once stays all-training). The two maps partition the annotated pixels.

    Which components: those with the smallest keys, a key drawn per component from ``rng`` (a
    seed, seed sequence or Generator), the class and the component's first pixel. A stroke keeps
    its key when others are added, so successive fine-tunes of one session validate on nearly
    the same strokes (a new stroke changes the held-out set by at most one component per class),
    and versions' held-out Dice stay comparable."""
    s = np.asarray(strokes).astype(np.int64)
    if isinstance(rng, np.random.Generator):
        entropy = [int(rng.integers(2**31))]
    else:
        entropy = [0] if rng is None else [int(v) for v in np.atleast_1d(rng)]
    val = np.zeros_like(s)
    structure = ndimage.generate_binary_structure(s.ndim, s.ndim)  # diagonal steps join a stroke
    for k in np.unique(s[s > 0]):
        comps, n = ndimage.label(s == k, structure)
        n_val = min(round(validation_fraction * n), n - 1)
        if n_val <= 0:
            continue
        ids, first = np.unique(comps.ravel(), return_index=True)
        keys = [np.random.default_rng([*entropy, int(k), int(f)]).random() for c, f in zip(ids, first) if c > 0]
        chosen = np.argsort(keys, kind="stable")[:n_val] + 1
        val[np.isin(comps, chosen)] = k
    train = np.where(val > 0, 0, s)
    return train, val


@dataclass
class FineTuneResult:
    """A fine-tune's outcome. ``network`` is the trained copy (best validated weights); the
    caller's network is unchanged. ``metrics`` are plain numbers for a model card."""

    network: nn.Module
    train: Any  # TrainResult
    best_val_dice: float
    stopped: bool
    early_stopped: bool
    annotation_counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def default_fine_tune_config(**changes: Any):
    """TrainConfig for stroke fine-tuning: small CPU budget, 1 thread, early stop after 3
    validations without gain, every class scored (also class 0), BatchNorm statistics frozen
    (a few strokes must not re-estimate what the whole training run settled)."""
    from medloop.app.engine.train import TrainConfig

    base = TrainConfig(
        epochs=20,
        steps_per_epoch=20,
        batch_size=4,
        lr=1e-3,
        foreground_fraction=1.0,
        num_threads=1,
        early_stop_patience=3,
        val_ignore_background=False,
        freeze_norm_stats=True,
    )
    return replace(base, **changes)


class InputStash:
    """Keeps the latest input batch of a network: ``attach(net)`` registers a forward pre-hook
    (returns its handle); ``latest`` is the last ``(N, C, *s)`` input seen by ``net`` or by a
    deep copy of it made while attached."""

    def __init__(self) -> None:
        self._box: list[torch.Tensor] = []
        box = self._box

        def hook(module: torch.nn.Module, args: tuple) -> None:  # a plain function: deepcopy shares it
            box[:] = [args[0].detach()]

        self._hook = hook

    def attach(self, network: torch.nn.Module) -> Any:
        return network.register_forward_pre_hook(self._hook)

    @property
    def latest(self) -> torch.Tensor:
        if not self._box:
            raise RuntimeError("the network has not run since the input stash was attached")
        return self._box[0]


def anchored(
    value: torch.Tensor,
    logits: torch.Tensor,
    weight: torch.Tensor,
    parent_logits: Callable[[], torch.Tensor],
    anchor: float,
    confidence: float = 0.9,
) -> torch.Tensor:
    """``value`` plus ``anchor`` x the cross-entropy of ``logits`` against the starting model's
    softmax (``parent_logits()``, run only when needed) on the unannotated (weight-0) pixels
    where the starting model is at least ``confidence`` sure, averaged over the unannotated
    pixels. See :class:`AnchoredLoss`."""
    free = (weight == 0).to(logits.dtype)
    n = free.sum()
    if not n:
        return value
    with torch.no_grad():
        soft = torch.softmax(parent_logits().float(), dim=1)
        sure = (soft.amax(dim=1) >= confidence).to(logits.dtype)
    ce = -(soft * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return value + anchor * (ce * free * sure).sum() / n


class AnchoredLoss:
    """The stroke loss plus ``weight`` x the cross-entropy of the prediction against the
    starting model's own prediction on the pixels nobody annotated ("learning without
    forgetting", Li & Hoiem 2017). A handful of strokes then corrects the model where it was
    painted without it forgetting the rest: fine-tuning the packaged brain model on 5 % strokes
    lowered its Dice from 0.84 to 0.75 without this term (benchmarks/bench_finetune_convergence.py).
    The starting model runs on the same augmented batch (taken from ``stash``). Only pixels it
    predicts with at least ``confidence`` are anchored: an untrained or unsure model (the
    regions being corrected) is not held back, a confident one keeps what it knew.

    :func:`fine_tune` uses the same term through :class:`AnchoredStep`, which sees the input
    batch itself; this loss form serves callers that can only pass a ``loss_fn``."""

    def __init__(self, loss: Callable, parent: nn.Module, stash: InputStash, weight: float, confidence: float = 0.9) -> None:
        self.loss, self.parent, self.stash, self.weight = loss, parent, stash, float(weight)
        self.confidence = float(confidence)
        self.label_values = getattr(loss, "label_values", None)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        value = self.loss(logits, target, weight)
        return anchored(value, logits, weight, lambda: self.parent(self.stash.latest), self.weight, self.confidence)


class AnchoredStep(SegmentationStep):
    """The segmentation step whose loss adds :func:`anchored`'s pull towards ``parent`` (the
    starting model, run on the same input batch)."""

    def __init__(
        self, model: nn.Module, loss_fn: Callable, config: Any, device: Any, has_val: bool, *,
        parent: nn.Module, anchor: float, confidence: float = 0.9,
    ) -> None:
        super().__init__(model, loss_fn, config, device, has_val)
        self.parent, self.anchor, self.confidence = parent.to(device), float(anchor), float(confidence)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        value = self.loss_fn(logits, y, w)
        return anchored(value, logits, w, lambda: self.parent(x), self.anchor, self.confidence)


def _stroke_loss(mode: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss on training pairs whose label is the stroke map itself (paint convention)."""

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        labels = torch.where(weight > 0, target.long(), torch.zeros_like(target, dtype=torch.long))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unannotated patch: a zero step, not a warning per step
            value = sparse_loss(logits, labels, mode)
        return (logits * 0).sum() if value is None else value

    return loss_fn


@dataclass
class FineTuneParams:
    """How :func:`fine_tune` trains (the ``TrainConfig`` sets epochs, steps, lr, ...)."""

    mode: str = "mini-batch"  # stroke-loss balancing: none, instance, mini-batch, auto
    # Share of each class's stroke components held out (seeded by ``seed``) to validate per
    # epoch, keep the best weights and stop early (``config.early_stop_patience``). 0, or too
    # few strokes, trains without validation.
    validation_fraction: float = 0.2
    seed: int = 0
    raise_on_stop: bool = False  # a stop raises JobCancelled instead of returning stopped=True
    # Replaces the balanced stroke loss: ``loss_fn(logits, target, weight)`` with ``target`` the
    # (augmented) paint-convention label map and ``weight`` 1 on its annotated pixels (used by
    # point and boundary-loss training).
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # The label maps are an encoding that ``loss_fn`` decodes (values 0..label_values-1, 0 =
    # nothing known; e.g. point training's two pseudo-label maps in one, so both are augmented
    # together), not strokes: they are range-checked against that instead of the model's classes
    # and nothing is held out for validation. None: ``loss_fn.label_values`` if the loss has that
    # attribute (how ``run_weak``'s train callback, which passes only ``loss_fn``, gets it).
    label_values: int | None = None
    # Weight of the pull towards the starting model on the unannotated pixels (AnchoredStep; 0 = off).
    anchor: float = DEFAULT_ANCHOR
    # The pixels nobody painted (module ``unannotated``): "select" scores each epoch by the mean
    # of the held-out stroke Dice and the agreement with a stroke-trained pixel classifier where
    # it is confident; "pseudo" also trains on those confident labels; "off": strokes only.
    unannotated: str = "select"
    pseudo_weight: float = DEFAULT_PSEUDO_WEIGHT


def fine_tune(
    entry_or_network: Any,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    config: Any = None,
    params: FineTuneParams | None = None,
    *,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **changes: Any,
) -> FineTuneResult:
    """Fine-tune a copy of a network on stroke annotations: the segmentation step (with the
    stroke loss, anchored to the starting model) on the one training loop.

    Args:
        entry_or_network: a :class:`~medloop.models.registry.ModelEntry` (built with its checked
            weights) or a network (never modified: a deep copy is trained).
        pairs: ``(image (C, *spatial), strokes (*spatial))``, strokes in the paint convention.
        config: a :class:`~medloop.app.engine.train.TrainConfig` (default
            :func:`default_fine_tune_config`); its seed is replaced by ``params.seed``,
            ``num_classes`` filled from the model.
        params: :class:`FineTuneParams`; ``changes`` (its field names, e.g. ``mode``, ``seed``,
            ``loss_fn``, ``anchor``) override its fields.
        progress, should_stop: passed to the loop; on stop the result has ``stopped=True`` (or
            :class:`~medloop.app.engine.jobs.JobCancelled` is raised with ``raise_on_stop``). The
            caller's network is unchanged either way.

    Deterministic for a seed on the CPU.
    """
    from medloop.app.engine.train import train_segmentation
    from medloop.models.registry import ModelEntry, build_model

    p = replace(params or FineTuneParams(), **changes)
    if p.mode not in BALANCING:
        raise ValueError(f"mode must be one of {', '.join(BALANCING)}; got {p.mode!r}")
    if p.unannotated not in UNANNOTATED:
        raise ValueError(f"unannotated must be one of {', '.join(UNANNOTATED)}; got {p.unannotated!r}")
    network = build_model(entry_or_network) if isinstance(entry_or_network, ModelEntry) else entry_or_network
    if not isinstance(network, nn.Module):
        raise MedloopError(f"fine_tune needs a ModelEntry or a torch network, got {type(entry_or_network).__name__}")
    if not pairs:
        raise AnnotationError("nothing to train on: give at least one (image, strokes) pair")
    out_channels = output_conv(network).out_channels if _has_output_conv(network) else None
    config = default_fine_tune_config() if config is None else config
    config = replace(config, seed=int(p.seed), num_classes=config.num_classes or (max(2, out_channels) if out_channels else None))
    label_values = p.label_values if p.label_values is not None else getattr(p.loss_fn, "label_values", None)
    if label_values is None:
        k, fraction = config.num_classes or int(max(np.max(s) for _, s in pairs)), p.validation_fraction
    else:  # an encoded map: check its value range; no validation split
        k, fraction = int(label_values) - 1, 0.0
    data = _stroke_pairs(pairs, k, fraction, int(p.seed))
    loss_fn, validate = p.loss_fn, None
    if label_values is None and p.unannotated != "off" and (data.val or p.unannotated == "pseudo"):
        # Only beside held-out strokes: a run asked to train without validation keeps training.
        loss_fn, validate = _unannotated_setup(network, data, config, p)
    make_step = None
    if p.anchor > 0:
        parent = copy.deepcopy(network).eval().requires_grad_(False)
        make_step = functools.partial(AnchoredStep, parent=parent, anchor=p.anchor)
    t0 = time.perf_counter()
    result = train_segmentation(
        network, data.train, data.val or None, config, loss_fn if loss_fn is not None else _stroke_loss(p.mode),
        progress=progress, should_stop=should_stop, copy_model=True, raise_on_stop=p.raise_on_stop,
        make_step=make_step, validate=validate,
    )
    return _fine_tune_result(result, data, len(pairs), p, time.perf_counter() - t0)


@dataclass
class _StrokeData:
    train: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    val: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    counts: dict[int, int]
    val_pixels: int
    held_out: list[np.ndarray | None] = field(default_factory=list)  # per pair: its validation strokes
    pseudo_pixels: int = 0


def _unannotated_setup(network: nn.Module, data: _StrokeData, config: Any, p: FineTuneParams) -> tuple[Any, Any]:
    """The loss and the loop's ``validate`` for ``p.unannotated``: a pixel classifier fitted on
    the training strokes labels the unpainted pixels where it is confident; those labels score
    each epoch (with the held-out strokes) and, for "pseudo", are trained on as well."""
    from medloop.app.engine.train import segmentation_validator
    from medloop.plugins.correction.unannotated import UnannotatedCheck, stroke_and_pseudo_loss, teacher_labels

    k = int(config.num_classes or 2)
    pairs = [(image, label) for image, label, _ in data.train]
    checks = teacher_labels(pairs, k, seed=p.seed, exclude=data.held_out)
    divisible_by = int(getattr(network, "divisible_by", 1) or 1)
    strokes = segmentation_validator(data.val, config, divisible_by) if data.val else None
    free = [(label == 0) & (held is None or held == 0) for (_, label, _), held in zip(data.train, data.held_out)]
    validate = None if not data.val else UnannotatedCheck(
        [image for image, _, _ in data.train], checks, free,
        lambda model, x: predict_whole(model, x, divisible_by)[0], strokes,
    )
    loss_fn = p.loss_fn
    if p.unannotated == "pseudo" and loss_fn is None:
        merged = [with_pseudo(label, check) for (_, label, _), check in zip(data.train, checks)]
        data.train = [(image, label, weight) for (image, _, _), (label, weight) in zip(data.train, merged)]
        data.pseudo_pixels = int(sum(int((c > 0).sum()) for c in checks))
        loss_fn = stroke_and_pseudo_loss(p.mode, p.pseudo_weight)
    return loss_fn, validate


def _stroke_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], k: int, validation_fraction: float, seed: int
) -> _StrokeData:
    """Checked ``(image, strokes)`` pairs as the trainer's ``(image, label, weight)`` pairs, with
    a share of each image's stroke components held out for validation."""
    data = _StrokeData([], [], {}, 0)
    for n, (image, strokes) in enumerate(pairs):
        image = np.asarray(image, dtype=np.float32)
        s = np.asarray(strokes)
        if image.ndim == s.ndim:
            image = image[None]
        if image.shape[1:] != s.shape:
            raise AnnotationError(f"pair {n}: annotation shape {s.shape} does not match the image's {image.shape[1:]}")
        info = validate_strokes(s, k, fine_tune=True)
        for c, v in info["counts"].items():  # type: ignore[union-attr]
            data.counts[c] = data.counts.get(c, 0) + v
        tr, va = split_strokes(s, validation_fraction, (seed, n)) if validation_fraction > 0 else (s.astype(np.int64), None)
        data.train.append((image, tr.astype(np.int64), (tr > 0).astype(np.float32)))
        data.held_out.append(va if va is not None and va.any() else None)
        if va is not None and va.any():
            data.val.append((image, np.maximum(va - 1, 0).astype(np.int64), (va > 0).astype(np.float32)))
            data.val_pixels += int((va > 0).sum())
    return data


def _fine_tune_result(result: Any, data: _StrokeData, images: int, p: FineTuneParams, seconds: float) -> FineTuneResult:
    annotated = sum(data.counts.values())
    annotation_counts = {
        "images": images,
        "annotated_pixels": annotated,
        "per_class": {str(c): v for c, v in sorted(data.counts.items())},
        "validation_pixels": data.val_pixels,
        "training_pixels": annotated - data.val_pixels,
    }
    metrics = {
        "best_val_dice": None if np.isnan(result.best_val_dice) else float(result.best_val_dice),
        "best_epoch": int(result.best_epoch),
        "epochs_done": int(result.epochs_done),
        "steps_done": int(result.steps_done),
        "final_train_loss": float(result.history[-1]["train_loss"]) if result.history else None,
        "mode": p.mode,
        "anchor": float(p.anchor),
        "unannotated": p.unannotated,
        "pseudo_pixels": data.pseudo_pixels,
        "seed": int(p.seed),
        "seconds": round(seconds, 3),
    }
    curve = _curve(result.history)
    if curve:
        metrics["curve"] = curve
        best = next((c for c in curve if c["epoch"] == result.best_epoch), {})
        metrics.update({key: best.get(key) for key in ("val_stroke_dice", "unannotated_agreement")})
    return FineTuneResult(
        network=result.model.eval(),
        train=result,
        best_val_dice=float(result.best_val_dice),
        stopped=bool(result.stopped),
        early_stopped=bool(result.early_stopped),
        annotation_counts=annotation_counts,
        metrics=metrics,
        seconds=seconds,
    )


def _rounded(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per validated epoch: the selection score and, with ``unannotated`` on, the held-out
    stroke Dice, the agreement on unannotated pixels and their prediction change."""
    keys = ("val_mean_dice", "val_stroke_dice", "unannotated_agreement", "unannotated_change")
    return [
        {"epoch": int(r["epoch"]), **{k: _rounded(r.get(k)) for k in keys if k in r}}
        for r in history if "val_mean_dice" in r
    ]


def _has_output_conv(network: nn.Module) -> bool:
    try:
        output_conv(network)
        return True
    except MedloopError:
        return False
