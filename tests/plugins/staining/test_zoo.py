"""The packaged staining models: where they live, that they load sha256-checked, reproduce their
test data and still meet the numbers measured when they were trained (seconds); and that a
recipe trains, writes and checks a model (tiny recipes)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medloop.app.errors import ResourceError
from medloop.plugins.staining.checks import StainInputError
from medloop.plugins.staining.recipes import StainRecipeError, check_acceptance, load_stain_recipe, train_stain_recipe
from medloop.plugins.staining.zoo import PACKAGE, list_stain_models, load_stain_model, stain_model_dirs

NAMES = ("stain-despeckle-rcm", "stain-transfer-ihc")


def test_packaged_models_are_listed_and_not_offered_as_segmentation_models():
    from medloop.app.discovery import plugin_resource_dirs
    from medloop.models.registry import list_models

    assert [c.name for c in list_stain_models()] == list(NAMES)
    assert all(d.name == "stain_models" for d in stain_model_dirs())
    # The shared registry (segmentation, correction and review panels) reads resources/models:
    # even once the plugin is registered, it finds no staining card there.
    assert plugin_resource_dirs("models", plugins=(PACKAGE,)) == []
    assert not {e.name for e in list_models()} & set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_card_fields_and_test_data(name):
    model = load_stain_model(name)
    card = model.card
    raw = card.raw
    assert raw["kind"] in ("despeckle", "stain-transfer") and card.task == "image-to-image"
    assert raw["medical"]["not_for_diagnosis"]
    assert raw["training"]["recipe"] == load_stain_recipe(name).raw  # the packaged recipe made these weights
    assert raw["training"]["command"].startswith(f"medloop stain train --recipe {name}")
    assert "um_per_px" in raw and raw["architecture"]["name"].startswith("medloop.plugins.staining.")
    data = np.load(card.path.parent / raw["test_data"]["source"])
    if model.kind == "despeckle":
        out = model.despeckle(data["input"])
    else:
        out = model.translate(data["input"])
    assert np.abs(out - data["output"]).max() <= raw["test_data"]["tolerance"]
    record = model.provenance(0.0, direction="A->B")
    assert record["model"] == name and record["weights_sha256"] == raw["weights"]["sha256"] and record["kind"] == model.kind


def test_despeckler_meets_its_measured_numbers():
    from medloop.plugins.staining.deconvolution import despeckle_data
    from medloop.plugins.staining.evaluation import evaluate_despeckler

    model = load_stain_model("stain-despeckle-rcm")
    _, clean, noisy = despeckle_data()
    measured = evaluate_despeckler(model.networks["despeckler"], clean, noisy)
    card = model.card.raw["metrics"]
    for key in ("psnr_net", "psnr_net_median", "psnr_median", "psnr_noisy"):
        assert measured[key] == pytest.approx(card[key], abs=0.02), key
    for key in ("ssim_net", "ssim_net_median"):
        assert measured[key] == pytest.approx(card[key], abs=0.002), key
    assert check_acceptance(model.card.raw["training"]["recipe"]["acceptance"], measured) == []


def test_stain_transfer_meets_its_measured_numbers(gareau_data):
    """Spec §6 check 6's numbers on the held-out quarter, and better paired PSNR than Macenko and
    Reinhard (torchstain) fitted to domain B."""
    from medloop.plugins.staining.evaluation import evaluate_transfer

    model = load_stain_model("stain-transfer-ihc")
    recipe = model.card.raw["training"]["recipe"]
    measured = evaluate_transfer(model.generator("A->B"), model.generator("B->A"), gareau_data,
                                 macenko_apply_beta=recipe["evaluation"]["macenko_apply_beta"])
    card = model.card.raw["metrics"]
    for key in ("cycle_l1", "wd_ratio", "ssim_grey_input_output", "psnr_output", "psnr_macenko", "psnr_reinhard"):
        assert measured[key] == pytest.approx(card[key], abs=0.02), key
    measured["cycle_ratio"] = measured["cycle_l1"] / card["cycle_l1_step0"]
    assert check_acceptance(recipe["acceptance"], measured) == []


def test_a_damaged_weight_file_is_refused(tmp_path):
    folder = list_stain_models()[0].path.parent
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    weights = copy / json.loads((copy / "card.json").read_text())["weights"]["source"]
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ResourceError, match="do not match the sha256"):
        load_stain_model(copy)


def test_loader_errors():
    with pytest.raises(StainInputError, match="no staining model named 'nope'; known: stain-despeckle-rcm"):
        load_stain_model("nope")
    transfer = load_stain_model("stain-transfer-ihc")
    with pytest.raises(StainInputError, match="direction 'A-B' is unknown"):
        transfer.generator("A-B")
    with pytest.raises(StainInputError, match="not a despeckle model"):
        transfer.despeckle(np.zeros((8, 8)))
    with pytest.raises(StainInputError, match="not a stain-transfer model"):
        load_stain_model("stain-despeckle-rcm").translate(np.zeros((8, 8, 3)))


def _tiny(tmp_path, name: str, **changes) -> str:
    raw = dict(load_stain_recipe(name).raw)
    raw["name"] = f"tiny-{name}"
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    path = tmp_path / f"{raw['name']}.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_a_recipe_trains_writes_and_checks_a_model(tmp_path):
    recipe = _tiny(tmp_path, "stain-transfer-ihc", generator={"width": 4, "depth": 1},
                   train={"disc_width": 4, "patch": 32, "batch": 2, "epochs": 2, "steps_per_epoch": 1}, acceptance=None)
    out = train_stain_recipe(recipe, tmp_path / "transfer")
    model = load_stain_model(out)
    assert model.card.raw["training"]["steps"] == 2 and not (out / "checkpoint.pt").exists()
    assert model.translate(np.random.default_rng(0).random((20, 20, 3))).shape == (20, 20, 3)
    strict = _tiny(tmp_path, "stain-despeckle-rcm", train={"width": 4, "steps": 2, "steps_per_epoch": 1, "crop": 16},
                   acceptance={"psnr_gain_net_min": 100.0})
    with pytest.raises(StainRecipeError, match="misses its acceptance numbers: psnr_gain_net .* < 100.0"):
        train_stain_recipe(strict, tmp_path / "despeckle")
    assert load_stain_model(tmp_path / "despeckle").kind == "despeckle"  # written all the same
    with pytest.raises(StainRecipeError, match="no staining recipe 'nope'"):
        load_stain_recipe("nope")
    typo = _tiny(tmp_path, "stain-despeckle-rcm", train={"stpes": 3})
    with pytest.raises(StainRecipeError, match="unknown train settings: stpes"):
        train_stain_recipe(typo, tmp_path / "typo")


def test_despeckling_inside_the_confocal_path_brings_the_rendering_closer_to_the_clean_one(ihc):
    """Paper A's pipeline on held-out rows: speckled RCM -> packaged despeckler -> Gareau."""
    from medloop.plugins.staining.confocal import ConfocalParams, confocal_to_rgb, gareau
    from medloop.plugins.staining.deconvolution import fcm_sim, noisy_rcm, rcm_sim
    from medloop.plugins.staining.metrics import psnr

    f, r = fcm_sim(ihc)[256:], rcm_sim(ihc)[256:]
    image = np.stack([f, np.clip(noisy_rcm(r, seed=5), 0, 1)])
    params = ConfocalParams(percentiles=None)  # the modes are normalised already
    model = load_stain_model("stain-despeckle-rcm")
    clean = gareau(f, r)
    plain = confocal_to_rgb(image, params)
    cleaned = confocal_to_rgb(image, params, despeckle=model.despeckle)
    assert psnr(clean, cleaned) > psnr(clean, plain) + 3.0
