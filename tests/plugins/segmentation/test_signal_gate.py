"""The signal gate through ``segment()`` (issue #18 §3): slices without signal are background by
construction, a card's ``inference.signal_gate: false`` turns it off, and on the brain sample
the gate changes nothing where there is tissue."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medloop.app.engine.metrics import dice_per_class
from medloop.app.io.image import MedImage
from medloop.models.registry import get_model, register_model
from medloop.models.variants import noise_everywhere, with_empty_slices
from medloop.plugins.segmentation.method import SegmentParams, segment
from tests.models.tiny import make_tiny_model

GM, WM = 1, 2


def slice_card(path, name: str, gate: bool | None) -> None:
    """The tiny model as a GroupNorm 2-D slice model (axial, percentile-normalised)."""
    card = json.loads(path.read_text())
    card["name"] = name
    card["medical"]["slice_axis"] = 0
    card["inputs"][0]["preprocessing"] = {"name": "percentile", "lower": 0.5, "upper": 99.0}
    if gate is not None:
        card["inference"]["signal_gate"] = gate
    path.write_text(json.dumps(card))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gate")
    for name, gate in (("gn-slices", None), ("gn-slices-ungated", False)):
        weights, card = make_tiny_model(root / name, spatial_dims=2, seed=5, name=name, norm="group")
        slice_card(card, name, gate)
        register_model(weights, card, root / "zoo")
    return root / "zoo"


def volume_with_bad_slices() -> tuple[MedImage, dict[str, slice]]:
    """8 slices of discs on a dark background (0-224 scale), then 4 of a +-0.0015 ripple, 4 of
    Rician noise (3 % of the tissue level) and 4 exactly zero."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    discs = [np.where(np.hypot(yy - 20 - z, xx - 18 + z) < 12, 224.0, 0.0) - 90 * (np.hypot(yy - 20, xx - 20) < 5) for z in range(8)]
    ripple = [0.0015 * np.sin(np.arange(1600).reshape(40, 40) + z) for z in range(4)]
    rician = [np.hypot(rng.normal(0, 6.7, (40, 40)), rng.normal(0, 6.7, (40, 40))) for _ in range(4)]
    zero = [np.zeros((40, 40))] * 4
    array = np.stack(discs + ripple + rician + zero).astype(np.float32)
    image = MedImage(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    return image, {"structure": slice(0, 8), "ripple": slice(8, 12), "rician": slice(12, 16), "zero": slice(16, 20)}


def test_slices_without_signal_are_background_and_the_card_can_turn_the_gate_off(zoo):
    image, parts = volume_with_bad_slices()
    gated = segment(image, SegmentParams("gn-slices", models_dir=zoo, device="cpu"))
    raw = segment(image, SegmentParams("gn-slices-ungated", models_dir=zoo, device="cpu"))
    g, r = np.asarray(gated.labels.array), np.asarray(raw.labels.array)
    # Ungated, the GroupNorm network invents foreground on ripple and noise (the test can fail):
    assert int((r[parts["ripple"]] > 0).sum()) > 100 and int((r[parts["rician"]] > 0).sum()) > 100
    # (this model's output bias even makes an exactly-zero slice foreground: 2700 of 6400 voxels)
    for part in ("ripple", "rician", "zero"):
        assert int((g[parts[part]] > 0).sum()) == 0, part
    np.testing.assert_array_equal(g[parts["structure"]], r[parts["structure"]])
    assert raw.provenance["signal_gate"] == {"on": False}
    record = gated.provenance["signal_gate"]
    assert record["on"] and record["tiles"] == 80 and record["skipped"] == 48, record  # 2 x 2 tiles a slice, 12 bad slices


@pytest.fixture(scope="module")
def brain_runs(brain_sample, tmp_path_factory):
    """The packaged ``brain-tissue`` on the sample and on it with 12 empty + 12 ripple slices,
    with the gate (the default) and without (a copy of its card with ``signal_gate: false``)."""
    torch.set_num_threads(2)
    entry = get_model("brain-tissue")
    card = json.loads((entry.folder / "card.json").read_text())
    card["name"] = "brain-tissue-ungated"
    card["inference"]["signal_gate"] = False
    src = tmp_path_factory.mktemp("ungated")
    (src / "card.json").write_text(json.dumps(card))
    zoo = src / "zoo"
    register_model(entry.weights_path, src / "card.json", zoo)
    t1, tissue = brain_sample
    empty, empty_truth = with_empty_slices(t1, tissue, rng=np.random.default_rng(5))
    noisy = noise_everywhere(t1, np.random.default_rng(6), sigma=0.03, rician=True)
    runs = {}
    for name in ("brain-tissue", "brain-tissue-ungated"):
        for case, image in (("plain", t1), ("empty", empty), ("rician", noisy)):
            runs[name, case] = segment(image, SegmentParams(name, device="cpu", models_dir=zoo))
    return runs, tissue, empty_truth


def test_brain_model_dice_unchanged_by_the_gate(brain_runs):
    runs, truth, _ = brain_runs
    gated = dice_per_class(np.asarray(runs["brain-tissue", "plain"].labels.array), np.asarray(truth.array), 3)
    raw = dice_per_class(np.asarray(runs["brain-tissue-ungated", "plain"].labels.array), np.asarray(truth.array), 3)
    changed = int((np.asarray(runs["brain-tissue", "plain"].labels.array) != np.asarray(runs["brain-tissue-ungated", "plain"].labels.array)).sum())
    print(f"plain sample Dice GM/WM gated {gated[GM]:.4f}/{gated[WM]:.4f} ungated {raw[GM]:.4f}/{raw[WM]:.4f}, {changed} voxels differ")
    assert abs(gated[GM] - raw[GM]) <= 0.002 and abs(gated[WM] - raw[WM]) <= 0.002
    assert runs["brain-tissue", "plain"].provenance["signal_gate"]["skipped"] > 0  # the empty top slices


def test_brain_model_finds_no_tissue_in_added_empty_and_ripple_slices(brain_runs):
    runs, _, _ = brain_runs
    gated = np.asarray(runs["brain-tissue", "empty"].labels.array)
    raw = np.asarray(runs["brain-tissue-ungated", "empty"].labels.array)
    added = int((gated[:12] > 0).sum() + (gated[-12:] > 0).sum())
    print(f"tissue voxels in the 24 added slices: gated {added}, ungated {int((raw[:12] > 0).sum() + (raw[-12:] > 0).sum())}")
    assert added == 0


def test_brain_model_noise_only_slices_are_background(brain_runs):
    """Rician noise (3 % of white matter) over the whole field of view: the slices beyond the
    head hold only noise and come out as background; the head keeps its Dice."""
    runs, truth, _ = brain_runs
    t = np.asarray(truth.array)
    beyond = np.flatnonzero((t > 0).sum(axis=(1, 2)) == 0)  # axial slices without tissue
    gated = np.asarray(runs["brain-tissue", "rician"].labels.array)
    raw = np.asarray(runs["brain-tissue-ungated", "rician"].labels.array)
    dice_g, dice_r = dice_per_class(gated, t, 3), dice_per_class(raw, t, 3)
    print(f"Rician 3 %: tissue voxels in {len(beyond)} slices beyond the head gated {int((gated[beyond] > 0).sum())} "
          f"ungated {int((raw[beyond] > 0).sum())}; Dice GM/WM gated {dice_g[GM]:.4f}/{dice_g[WM]:.4f} ungated {dice_r[GM]:.4f}/{dice_r[WM]:.4f}")
    assert len(beyond) >= 10 and int((gated[beyond] > 0).sum()) == 0
    assert dice_g[GM] >= dice_r[GM] - 0.002 and dice_g[WM] >= dice_r[WM] - 0.002


def test_constant_slices_padded_by_tiles_are_background_for_a_groupnorm_brain_model():
    """v1 (``brain-tissue-t1``, GroupNorm) under 12 constant slices (1e-5 .. 0.3 of white
    matter): a tile pads the brightest with zeros, a step the tile gate alone saw as signal
    (11,581 tissue voxels, measured); judged on the slice itself it is background."""
    from medloop.app.samples import load_brain_sample
    from medloop.models.variants import constant_slices

    t1, tissue = load_brain_sample()
    image, labels = constant_slices(t1, tissue, np.geomspace(1e-5, 0.3, 12))
    pred = np.asarray(segment(image, SegmentParams("brain-tissue-t1", device="cpu")).labels.array)
    assert int((pred[:12] > 0).sum()) == 0
    dice = dice_per_class(pred, np.asarray(labels.array), 3)
    assert dice[GM] > 0.85 and dice[WM] > 0.85  # the brain itself is still segmented
