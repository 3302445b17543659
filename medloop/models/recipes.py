"""Train a model from a recipe (JSON) and write its weights, card and test data.

``medloop train --recipe NAME|FILE --out DIR`` calls :func:`train_recipe`; every packaged weight
file is reproducible by such a command on data that installs with medloop.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.atomic import atomic_torch_save
from medloop.app.io.image import MedImage
from medloop.models.card import CARD_FILE, NOT_FOR_DIAGNOSIS, write_card

WEIGHTS_FILE = "weights.pt"
TEST_DATA_FILE = "test_data.npz"


class RecipeError(MedloopError):
    """A training recipe is missing, malformed or names data that does not exist."""


@dataclass
class Recipe:
    raw: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return str(self.raw["name"])


def packaged_recipes_dirs() -> list[Path]:
    """Every folder of packaged recipes: the shared one, then each plugin's own."""
    from medloop.app.discovery import plugin_resource_dirs as resource_dirs

    return [Path(str(files("medloop") / "resources" / "recipes")), *resource_dirs("recipes")]


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name, or a recipe file."""
    path = Path(name_or_path)
    if not path.is_file():
        packaged = [d / f"{name_or_path}.json" for d in packaged_recipes_dirs()]
        path = next((p for p in packaged if p.is_file()), path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for d in packaged_recipes_dirs() for p in d.glob("*.json")))
        raise RecipeError(f"no training recipe {name_or_path!r}: not a file, nor a packaged recipe ({known})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RecipeError(f"training recipe {path} is not valid JSON ({exc}); fix it") from None
    missing = [k for k in ("name", "data", "classes", "architecture", "train") if k not in raw]
    if missing and isinstance(raw, dict) and isinstance(raw.get("command"), str):  # a plugin's own recipe (its verb trains it)
        raise RecipeError(f"{path} is a recipe for '{raw['command']}', not for 'medloop train'; run that command")
    if missing:
        raise RecipeError(f"training recipe {path} lacks {missing[0]!r}")
    return Recipe(raw, path)


def resolve_data(ref: str) -> MedImage:
    """``sample:KEY`` is a packaged sample file; anything else is a path."""
    from medloop.app.io.read import read_image
    from medloop.app.samples import sample_path

    return read_image(sample_path(ref.split(":", 1)[1]) if ref.startswith("sample:") else ref)


def recipe_loss(name: str) -> Callable:
    """The registered training loss a recipe names (:func:`medloop.app.engine.losses.loss_by_name`)."""
    from medloop.app.engine.losses import loss_by_name

    try:
        return loss_by_name(name)
    except MedloopError as exc:
        raise RecipeError(str(exc)) from None


def augment_config(spec: str | dict[str, Any]):
    """``"strong"`` (the brain model's), ``"none"``, or explicit AugmentConfig fields."""
    from medloop.app.engine.augment import AugmentConfig

    if spec == "none":
        return None
    if spec == "strong":
        return AugmentConfig.strong() if hasattr(AugmentConfig, "strong") else AugmentConfig()
    names = {f.name for f in fields(AugmentConfig)}
    unknown = set(spec) - names
    if unknown:
        raise RecipeError(f"unknown augmentation settings {sorted(unknown)}; known: {sorted(names)}")
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def prepare_pair(image: MedImage, labels: MedImage, recipe: Recipe) -> tuple[np.ndarray, np.ndarray, MedImage]:
    """Image and labels on the model grid: (1, *spatial) normalised float32, (*spatial) int64."""
    from medloop.app.engine.resample import normalise, to_model_grid
    from medloop.app.io.validate import check_same_grid

    check_same_grid(image, labels)
    spacing = recipe.raw.get("spacing_mm")
    orientation = recipe.raw.get("orientation")
    grid = to_model_grid(image, tuple(spacing) if spacing else None, orientation)
    label_grid = _labels_to_grid(labels, grid, orientation)
    x = normalise(np.asarray(grid.array), recipe.raw.get("normalisation", {"name": "none"}))[None]
    return x.astype(np.float32), label_grid.astype(np.int64), grid


def _labels_to_grid(labels: MedImage, grid: MedImage, orientation: str | None) -> np.ndarray:
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    reference = to_sitk(grid.with_array(np.zeros(grid.shape, np.uint8)))
    moved = sitk.Resample(to_sitk(labels), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(moved)


def train_recipe(
    recipe: Recipe,
    out_dir: Path,
    epochs: int | None = None,
    resume: bool = False,
    progress: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    command: str | None = None,
) -> Path:
    """Train ``recipe`` and write ``weights.pt``, ``card.json`` and test data into ``out_dir``."""
    import torch

    from medloop.app.engine.train import TrainConfig, train_segmentation
    from medloop.models.nets import build_network
    from medloop.models.variants import bias_and_noise, rotate_pair

    raw = recipe.raw
    out_dir.mkdir(parents=True, exist_ok=True)
    train_cfg = dict(raw["train"])
    if epochs is not None:
        train_cfg["epochs"] = epochs
    seed = int(train_cfg.get("seed", 0))
    torch.manual_seed(seed)
    arch = raw["architecture"]
    network = build_network(arch["name"], **arch.get("kwargs", {}))

    train_pairs, val_pairs = [], []
    rng = np.random.default_rng(seed + 1)
    slice_axis = raw.get("slice_axis") if raw.get("mode") == "slices" else None
    sampler = None
    if "synth" in raw["data"]:
        sampler, train_pairs, val_pairs = synth_training(recipe, train_cfg, seed)
    for item in raw["data"].get("train", []):
        image, labels = resolve_data(item["image"]), resolve_data(item["labels"])
        x, y, _ = prepare_pair(image, labels, recipe)
        if slice_axis is None:
            train_pairs.append((x, y))
        else:
            bank = raw.get("slice_bank", {})
            train_pairs += slice_bank(x, y, int(bank.get("volumes", 16)), augment_config(bank.get("augment", "strong")), rng, slice_axis)
        # Held-out validation: the same anatomy as another session would show it.
        for k in range(int(raw["data"].get("validation_variants", 0))):
            rot_img, rot_lab = rotate_pair(image, labels, degrees=float(rng.uniform(-12, 12)), axis=tuple(rng.normal(size=3)))
            varied = bias_and_noise(rot_img, rng)
            varied = varied.with_array((np.asarray(varied.array, np.float32) * rng.uniform(0.5, 2.0)).astype(np.float32))
            vx, vy, _ = prepare_pair(varied, rot_lab, recipe)
            val_pairs += [(vx, vy)] if slice_axis is None else _slices(vx, vy, slice_axis)

    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in train_cfg.items() if k in known},
                         augment=augment_config(raw.get("augment", "none")))
    started = time.perf_counter()
    result = train_segmentation(
        network, train_pairs, val_pairs, config, recipe_loss(raw.get("loss", "dice_ce")),
        progress=progress, should_stop=should_stop,
        checkpoint_path=out_dir / "checkpoint.pt", resume=resume, sampler=sampler,
    )
    network.load_state_dict(result.best_state)
    network.eval()
    weights = out_dir / WEIGHTS_FILE
    atomic_torch_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, weights)
    test_data = _write_test_data(network, train_pairs[len(train_pairs) // 2][0], out_dir)
    card = _card(recipe, result, weights, test_data, time.perf_counter() - started, command)
    write_card(card, out_dir / CARD_FILE)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return out_dir


def slice_bank(x: np.ndarray, y: np.ndarray, volumes: int, config, rng: np.random.Generator, axis: int) -> list:
    """2-D training pairs: slices of ``volumes`` 3-D augmentations of one volume, so that a 2-D
    model learns what rotated heads, thick slices and bias fields look like slice by slice."""
    from medloop.app.engine.augment import augment

    pairs = _slices(x, y, axis)
    for _ in range(volumes):
        sample = augment(x, y, config, rng) if config is not None else None
        if sample is not None:
            pairs += _slices(sample.image, sample.label.astype(np.int64), axis)
    return pairs


def _slices(x: np.ndarray, y: np.ndarray, axis: int, keep_empty: float = 0.1) -> list:
    """(1, h, w) / (h, w) slices along ``axis`` holding labels, plus every tenth empty one."""
    xs, ys = np.moveaxis(x, 1 + axis, 1), np.moveaxis(y, axis, 0)
    pairs, empty = [], 0
    for k in range(ys.shape[0]):
        if ys[k].any() or (empty := empty + 1) % int(1 / keep_empty) == 0:
            pairs.append((np.ascontiguousarray(xs[:, k]), np.ascontiguousarray(ys[k])))
    return pairs


def _write_test_data(network, volume: np.ndarray, out_dir: Path) -> Path:
    """A small crop and the network's softmax on it: the card's test input and expected output."""
    import torch

    size = 32 if volume.ndim == 4 else 64
    centre = [n // 2 for n in volume.shape[1:]]
    crop = volume[(slice(None),) + tuple(slice(c - size // 2, c + size // 2) for c in centre)]
    with torch.inference_mode():
        probs = torch.softmax(network(torch.from_numpy(np.ascontiguousarray(crop[None]))), dim=1)[0].numpy()
    path = out_dir / TEST_DATA_FILE
    np.savez_compressed(path, input=crop.astype(np.float32), output=probs.astype(np.float32))
    return path


def _card(recipe: Recipe, result, weights: Path, test_data: Path, seconds: float, command: str | None) -> dict[str, Any]:
    from medloop.models.registry import sha256_of

    raw = recipe.raw
    meta = raw.get("card", {})
    dims = int(raw["architecture"].get("kwargs", {}).get("spatial_dims", 2 if raw["architecture"]["name"] != "unet3d" else 3))
    axes = "bczyx" if dims == 3 else "bcyx"
    return {
        "format_version": "medloop-card-1",
        "name": raw["name"],
        "version": str(raw.get("version", "1")),
        "parent": None,
        "description": raw.get("description", ""),
        "authors": meta.get("authors", []),
        "license": meta.get("license", "unknown"),
        "architecture": raw["architecture"],
        "weights": {"format": "pytorch_state_dict", "source": weights.name, "sha256": sha256_of(weights)},
        "inputs": [{"name": "image", "axes": axes, "channels": raw["architecture"]["kwargs"].get("in_channels", 1),
                    "data_type": "float32", "preprocessing": raw.get("normalisation", {"name": "none"})}],
        "outputs": [{"name": "probabilities", "axes": axes, "postprocessing": ["softmax", "argmax"]}],
        "test_data": {"source": test_data.name, "sha256": sha256_of(test_data), "tolerance": 1e-3},
        "inference": raw.get("inference", {}),
        "medical": {
            "modality": meta.get("modality", ""),
            "sequence": meta.get("sequence", ""),
            "expected_spacing_mm": raw.get("spacing_mm"),
            "orientation": raw.get("orientation"),
            "slice_axis": raw.get("slice_axis") if raw.get("mode") == "slices" else None,
            "classes": raw["classes"],
            "intended_use": meta.get("intended_use", ""),
            "limitations": meta.get("limitations", ""),
            "not_for_diagnosis": NOT_FOR_DIAGNOSIS,
        },
        "training": {
            "recipe": raw,
            "command": command or " ".join(shlex.quote(a) for a in ["medloop", *sys.argv[1:]]),
            "best_epoch": result.best_epoch,
            "best_validation_dice": result.best_val_dice,
            "seconds": round(seconds, 1),
        },
        "metrics": {},
    }


# ------------------------------------------------------------------------ synthetic heads (v2)


def brain_template(recipe: Recipe):
    """The soft MNI template (``data.synth.soft``: CSF/GM/WM x 255) and its T1 on the recipe's model
    grid, as a :class:`medloop.app.engine.synth.Template`."""
    import SimpleITK as sitk

    from medloop.app.engine.resample import to_model_grid
    from medloop.app.engine.synth import make_template
    from medloop.app.samples import sample_path

    spec = recipe.raw["data"]["synth"]
    t1 = resolve_data(spec.get("t1", "sample:t1"))
    ref = spec["soft"]
    path = sample_path(ref.split(":", 1)[1]) if ref.startswith("sample:") else Path(ref)
    channels = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32) / 255.0
    spacing, orientation = tuple(recipe.raw["spacing_mm"]), recipe.raw.get("orientation")
    soft = [to_model_grid(t1.with_array(channels[..., c]), spacing, orientation) for c in range(channels.shape[-1])]
    grid = soft[0]
    t1_grid = np.asarray(to_model_grid(t1, spacing, orientation).array, np.float32)
    to_index = np.linalg.inv(np.asarray(grid.direction) @ np.diag(grid.spacing))

    def index_of_ras(point):
        lps = np.array([-point[0], -point[1], point[2]], float)
        return (to_index @ (lps - np.asarray(grid.origin)))[::-1]

    return make_template(np.stack([np.asarray(s.array) for s in soft]), t1_grid, index_of_ras, float(spacing[0]))


def synth_config(spec: dict[str, Any]):
    """A :class:`~medloop.app.engine.synth.SynthConfig` from a recipe's ``data.synth.config``."""
    from medloop.app.engine.synth import SynthConfig

    names = {f.name for f in fields(SynthConfig)}
    unknown = set(spec) - names
    if unknown:
        raise RecipeError(f"unknown synthesis settings {sorted(unknown)}; known: {sorted(names)}")
    return SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def synth_training(recipe: Recipe, train_cfg: dict[str, Any], seed: int) -> tuple[Any, list, list]:
    """The refreshing bank of synthetic heads (``data.synth``: soft template, ``volumes``,
    ``refresh`` [count, every], ``template_fraction``, ``config``), its first slices, and the
    validation slices: the sample as real MR shows it (noise everywhere, T2-like, rotated with a
    bias field), drawn with another seed than any test's."""
    from medloop.app.engine.synth import RefreshingSliceBank, synthesize
    from medloop.app.samples import load_brain_sample
    from medloop.models.variants import bias_and_noise, noise_everywhere, rotate_pair, t2_like

    raw = recipe.raw
    if raw.get("mode") != "slices":
        raise RecipeError(f"training recipe {recipe.path}: data.synth trains slice models only (mode 'slices')")
    spec = raw["data"]["synth"]
    config = synth_config({**spec.get("config", {}), "template_fraction": spec.get("template_fraction", 0.15),
                           "spacing_mm": float(raw["spacing_mm"][0])})
    template = brain_template(recipe)
    normalisation = raw.get("normalisation", {"name": "none"})
    axis = int(raw.get("slice_axis", 0))
    bank = RefreshingSliceBank(
        lambda rng: synthesize(template, config, rng, normalisation), int(spec.get("volumes", 24)),
        tuple(spec.get("refresh", (3, 100))), axis, tuple(train_cfg["patch_size"]), int(train_cfg.get("batch_size", 8)),
        seed + 2, float(train_cfg.get("foreground_fraction", 0.5)),
    )
    rng = np.random.default_rng(seed + 3)
    t1, tissue = load_brain_sample()
    rotated, rotated_labels = rotate_pair(t1, tissue, degrees=-8.0, axis=(0.3, 1.0, 0.2))
    val_pairs = []
    for image, labels in ((noise_everywhere(rotated, rng, 0.025, rician=True), rotated_labels),
                          (noise_everywhere(t2_like(t1, tissue), rng, 0.015), tissue),
                          (bias_and_noise(rotated, rng), rotated_labels)):
        vx, vy, _ = prepare_pair(image, labels, recipe)
        val_pairs += _slices(vx, vy, axis)
    first = bank.pairs()  # a sample of the first bank fixes dimensionality and channels for the loop
    return bank, first[:: max(1, len(first) // 16)], val_pairs
