"""``medloop train --recipe click-any-2d --out DIR``: the 2-D click net, trained on the one loop.

A recipe (``resources/recipes/<name>.json``, kind ``click-2d``) sets the run. Every step draws a
batch of synthetic objects (:mod:`.synth`), simulates clicks the way MONAI's ``Interaction``
does (:mod:`.clicksim`: a first click, then 0..K no-grad rounds that each click in the larger
error of the net's own prediction; user errors; perturbed previous masks), then takes one
Dice + BCE step (Adam, cosine schedule) on the last round. One thread, deterministic
algorithms and seeded generators: the same recipe gives the same weights' sha256 on the same
machine. After training, the net is measured on the held-out objects (synthetic tubes from an
unused seed and family, and the MNI ventricles on native 2 mm slices of the real T1) with the
standard deterministic click simulator, and the card records those numbers with
``interactive.enabled = false`` (spec §7.4: the classical engine is the default until the net
beats it there).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.engine.loop import SeededSource, StepAt, TrainStep
from medloop.app.errors import MedloopError
from medloop.models.plugin_recipes import PluginRecipe, RecipeKit, load_plugin_recipe, run_plugin_recipe
from medloop.plugins.interactive import clicksim, synth
from medloop.plugins.interactive.evaluation import NOC_CAP, Trial, dice, summarise

PACKAGE = "medloop.plugins.interactive"
RECIPE_DIR = "recipes"
KINDS = ("click-2d",)
COMMAND = "medloop train --recipe {name} --out DIR"
WEIGHTS, TEST_DATA = "weights.pt", "test_data.npz"


class ClickRecipeError(MedloopError, ValueError):
    """A click-net recipe is missing or malformed, or its model misses its acceptance numbers."""


@dataclass(frozen=True)
class ClickTrainConfig:
    """The ``train`` section of a click-net recipe."""

    steps: int = 2000
    steps_per_epoch: int = 250
    batch: int = 16
    lr: float = 1e-3
    max_rounds: int = 3
    user_error: float = 0.1
    perturbed: float = 0.2
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class ClickEvalConfig:
    """The ``evaluation`` section: held-out tubes, MNI ventricle slices, clicks per object."""

    tubes: int = 40
    mni_axial: int = 4
    mni_coronal: int = 3
    clicks: int = NOC_CAP


class ObjectSource(SeededSource):
    """Batches of synthetic training objects: ``(images (B,H,W), targets (B,H,W) bool)``."""

    def __init__(self, batch: int, seed: int) -> None:
        self.batch, self.rng, self.tissue = batch, np.random.default_rng(seed), synth.mni_tissue()

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        objects = [synth.synth_object(self.rng, tissue=self.tissue) for _ in range(self.batch)]
        return np.stack([o.image for o in objects]), np.stack([o.target for o in objects])


def dice_bce(logits: Any, target: Any) -> Any:
    """BCE plus (1 - soft Dice), the Dice averaged over the samples."""
    import torch
    from torch.nn import functional as F

    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    dice = (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - dice).mean()


class ClickStep(TrainStep):
    """One click-simulation step (the loop's step hook): clicks and no-grad rounds, then Dice + BCE."""

    def __init__(self, model: Any, config: ClickTrainConfig) -> None:
        import torch

        self.model, self.config = model, config
        self.rng = np.random.default_rng(config.seed + 1)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.steps)

    def _inputs(self, images: np.ndarray, clicks: list[list[clicksim.Click]], prev: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.stack([clicksim.net_input(im, c, p) for im, c, p in zip(images, clicks, prev)]))

    def simulate(self, images: np.ndarray, targets: np.ndarray) -> tuple[list[list[clicksim.Click]], np.ndarray]:
        """The clicks and previous masks the trained forward sees (no-grad rounds included)."""
        import torch

        cfg, rng = self.config, self.rng
        clicks = [[clicksim.first_click(t, rng)] for t in targets]
        prev = np.zeros_like(targets)
        for i, t in enumerate(targets):
            if rng.random() < cfg.perturbed:
                prev[i] = clicksim.perturb(t, rng)
                extra = clicksim.next_click(prev[i], t, rng, cfg.user_error)
                clicks[i] += [extra] if extra else []
        for _ in range(int(rng.integers(0, cfg.max_rounds + 1))):
            with torch.no_grad():
                prev = (self.model(self._inputs(images, clicks, prev)) > 0)[:, 0].numpy()
            for i, t in enumerate(targets):
                extra = clicksim.next_click(prev[i], t, rng, cfg.user_error)
                clicks[i] += [extra] if extra else []
        return clicks, prev

    def __call__(self, batch: tuple[np.ndarray, np.ndarray], at: StepAt) -> dict[str, float]:
        import torch

        images, targets = batch
        clicks, prev = self.simulate(images, targets)
        logits = self.model(self._inputs(images, clicks, prev))
        loss = dice_bce(logits, torch.from_numpy(targets[:, None].astype(np.float32)))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach()), "lr": float(self.scheduler.get_last_lr()[0])}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------- held-out evaluation (spec §5)
def click_curve(net: Any, image: np.ndarray, target: np.ndarray, spacing: tuple[float, ...], clicks: int) -> Trial:
    """Dice and milliseconds after each of ``clicks`` deterministic clicks (EDT maxima, spec
    §5); a perfect mask is kept for the remaining clicks."""
    from medloop.plugins.interactive.clicknet import segment_slice

    pred, given, trial = np.zeros_like(target, bool), [clicksim.first_click(target)], Trial()
    for _ in range(clicks):
        started = time.perf_counter()
        pred = segment_slice(net, image, spacing, given, pred)
        trial.ms.append(1000.0 * (time.perf_counter() - started))
        trial.dice.append(dice(pred, target))
        nxt = clicksim.next_click(pred, target)
        if nxt is None:
            trial.dice += [trial.dice[-1]] * (clicks - len(trial.dice))
            break
        given.append(nxt)
    return trial


def _summary(trials: list[Trial]) -> dict[str, float]:
    """The card's numbers: :func:`~medloop.plugins.interactive.evaluation.summarise`, rounded."""
    numbers = summarise(trials)
    keep = ("dice@1", "dice@3", "dice@5", "dice@10", "noc85", "noc90", "fail90", "objects", "ms_p50", "ms_p95")
    return {k: (round(float(numbers[k]), 3) if k not in ("fail90", "objects") else int(numbers[k])) for k in keep}


def _roi(obj: synth.SliceObject) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation ROI of a slice object: a square of max(48 mm, 1.5 x its extent) around it."""
    pts = np.argwhere(obj.target)
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    half = max(24.0 / min(obj.spacing), 0.75 * float((pts.max(axis=0) - pts.min(axis=0) + 1).max()))
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, obj.target.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return obj.image[box], obj.target[box]


def evaluate_heldout(net: Any, config: ClickEvalConfig) -> dict[str, dict[str, float]]:
    """The §5 numbers of ``net`` on the held-out tubes (whole 64 x 64 grid, 1 mm) and the MNI
    ventricle slices (real T1, native 2 mm, ROI from :func:`_roi`)."""
    results = {}
    tubes = synth.heldout_tubes(config.tubes)
    results["heldout_tubes"] = _summary([click_curve(net, o.image, o.target, (1.0, 1.0), config.clicks) for o in tubes])
    slices = synth.mni_ventricle_slices(config.mni_axial, config.mni_coronal)
    results["mni_ventricles_2d"] = _summary([click_curve(net, *_roi(o), o.spacing, config.clicks) for o in slices])
    return results


# ---------------------------------------------------------------- the recipe's trainer and card
def _deterministic(threads: int) -> Callable[[], None]:
    """One thread count and deterministic algorithms for the run; returns the undo."""
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)

    def undo() -> None:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])

    return undo


def _test_data(net: Any, path: Path) -> Path:
    """A fixed input (the first held-out tube, first click) and the net's probability for it."""
    import torch

    obj = synth.heldout_tubes(1)[0]
    x = clicksim.net_input(obj.image, [clicksim.first_click(obj.target)], np.zeros_like(obj.target))[None]
    with torch.inference_mode():
        prob = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    np.savez_compressed(path, input=x, output=prob)
    return path


def train_click_recipe(raw: dict[str, Any], out: Path, progress: Callable[..., None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train a ``click-2d`` recipe into ``out`` (weights, test data); returns what the card records."""
    import torch

    from medloop.app.engine.loop import LoopConfig, train
    from medloop.app.io.atomic import atomic_torch_save
    from medloop.models.plugin_recipes import recipe_section, stopped
    from medloop.plugins.interactive.clicknet import ARCHITECTURE, build_click_net

    cfg = ClickTrainConfig(**recipe_section(raw, "train", asdict(ClickTrainConfig()), ClickRecipeError, f"recipe {raw['name']}"))
    evaluation = ClickEvalConfig(**recipe_section(raw, "evaluation", asdict(ClickEvalConfig()), ClickRecipeError, f"recipe {raw['name']}"))
    undo = _deterministic(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        net = build_click_net()
        loop = LoopConfig(epochs=max(1, cfg.steps // cfg.steps_per_epoch), steps_per_epoch=min(cfg.steps, cfg.steps_per_epoch),
                          seed=cfg.seed, checkpoint=out / "checkpoint.pt")
        started = time.perf_counter()
        result = train(net, ObjectSource(cfg.batch, cfg.seed), ClickStep(net, cfg), loop, progress=progress, should_stop=should_stop)
        stopped(result)
        train_seconds = round(time.perf_counter() - started, 1)
        net.eval()
        atomic_torch_save(net.state_dict(), out / WEIGHTS)
        files = {"weights": out / WEIGHTS, "test_data": _test_data(net, out / TEST_DATA)}
        metrics = evaluate_heldout(net, evaluation)
    finally:
        undo()
    flat = {f"{group}_{k}": v for group, numbers in metrics.items() for k, v in numbers.items()}
    return {"architecture": ARCHITECTURE, "files": files, "config": {"train": asdict(cfg), "evaluation": asdict(evaluation)},
            "steps": result.steps_done, "train_seconds": train_seconds, "metrics": flat, "numbers": metrics,
            "final_loss": result.history[-1].get("train_loss") if result.history else None}


def _reason(numbers: dict[str, dict[str, float]]) -> str:
    tubes, vents = numbers["heldout_tubes"], numbers["mni_ventricles_2d"]
    return (f"not yet compared with the classical engine on held-out objects (spec §7.4: run benchmarks/bench_interactive.py "
            f"--update-card); own numbers (deterministic simulator, 20 clicks): held-out synthetic tubes Dice@1 {tubes['dice@1']}, "
            f"NoC90 {tubes['noc90']}; MNI ventricle slices Dice@1 {vents['dice@1']}, NoC90 {vents['noc90']}")


def write_click_card(raw: dict[str, Any], trained: dict[str, Any], out: Path, command: str) -> Path:
    """The card of a trained click net: task ``interactive``, guidance, grid, sources, held-out
    objects, the measured numbers and ``interactive.enabled = false`` with the reason."""
    from medloop.models.card import CARD_FILE, write_card
    from medloop.models.plugin_recipes import plugin_card
    from medloop.plugins.interactive.clicknet import GRID

    inputs = [{"name": "image_guidance_previous", "axes": "bcyx", "channels": 4, "channel_names": list(clicksim.CHANNELS),
               "shape": [1, 4, GRID, GRID], "preprocessing": {"name": "percentile", "percentiles": list(clicksim.PERCENTILES)}}]
    outputs = [{"name": "object_logit", "axes": "bcyx", "channels": 1, "activation": "sigmoid", "threshold": 0.5}]
    card = plugin_card(raw, trained, command, "interactive", (inputs, outputs))
    card["interactive"] = {
        "enabled": False, "reason": _reason(trained["numbers"]), "numbers": trained["numbers"],
        "guidance": {"kind": "gaussian", "sigma_px": clicksim.SIGMA_PX, "peak": 1.0, "combine": "max per polarity",
                     "channels": list(clicksim.CHANNELS)},
        "grid": [GRID, GRID], "dims": 2, "slice_axis_for_volumes": 0,
        "training_sources": {"families": list(synth.TRAIN_FAMILIES), "weights": list(synth.FAMILY_WEIGHTS),
                             "mni": "packaged MNI152 2 mm tissue labels (GM/WM split by midline and Voronoi cells; "
                                    "ventricles and inner CSF merged into background, never a target)"},
        "held_out": {"synthetic": f"{trained['config']['evaluation']['tubes']} tubes (family never drawn in training), "
                                  f"seed {synth.HELDOUT_SEED}, whole 64 x 64 grid at 1 mm",
                     "mni": "ventricles (largest enclosed background component) on the native 2 mm slices of the real "
                            "T1 with the largest ventricle areas; ROI = square of max(48 mm, 1.5 x extent) around them"},
        "simulator": "click 1 at the target's EDT maximum; click k+1 at the EDT maximum of the larger of FN and FP, "
                     "positive in FN (spec §5, standard variant only)",
        "train_seconds": trained["train_seconds"], "threads": trained["config"]["train"]["threads"],
    }
    return write_card(card, out / CARD_FILE)


def load_click_recipe(name_or_path: str | Path) -> PluginRecipe:
    """A packaged click-net recipe by name, or a recipe file."""
    return load_plugin_recipe(name_or_path, RECIPE_DIR, PACKAGE, KINDS, ClickRecipeError, "click-net recipe")


def _trainer(recipe: PluginRecipe, out: Path, progress: Callable[..., None] | None, should_stop: Callable[[], bool] | None) -> dict[str, Any]:
    return train_click_recipe(recipe.raw, out, progress, should_stop)


def train_click_model(name_or_path: str | Path, out_dir: str | Path, progress: Callable[..., None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Path:
    """Train a click-net recipe into ``out_dir`` (weights, test data, card with the held-out numbers)."""
    recipe = load_click_recipe(name_or_path)
    kit = RecipeKit(_trainer, write_click_card, COMMAND.format(name=recipe.name), error=ClickRecipeError)
    return run_plugin_recipe(recipe, out_dir, kit, progress, should_stop)


def is_click_recipe(name_or_path: str | Path | None) -> bool:
    """True for a packaged click-net recipe name, or a recipe file of a click-net kind."""
    import json

    if not name_or_path:
        return False
    path = Path(name_or_path)
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("kind") in KINDS
        except (OSError, ValueError, AttributeError):
            return False
    from medloop.models.plugin_recipes import recipe_dirs

    return any((d / f"{name_or_path}.json").is_file() for d in recipe_dirs(RECIPE_DIR, PACKAGE))


class _ClickTraining:
    """``medloop train --recipe click-any-2d --out DIR``: this plugin's recipes (no extra flags)."""

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """No flags of its own: the recipe says everything."""

    def run(self, args: argparse.Namespace) -> int | None:
        """Train when ``--recipe`` is a click-net recipe; None otherwise (another mode's turn)."""
        if not is_click_recipe(getattr(args, "recipe", None)):
            return None
        from medloop.app.verbs import training_printer

        out = train_click_model(args.recipe, args.out, progress=training_printer(str(args.recipe), epochs_only=True))
        print(f"wrote {out} (click-net card and weights; the engine stays disabled until it beats the classical one)")
        return 0


TRAINING = _ClickTraining()
