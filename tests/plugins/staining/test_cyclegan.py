"""Spec §6 checks 5 (architectures) and 6 (the 40-step CycleGAN smoke with the §3 preset), the
identity-weight schedule, and the tissue-masked patch sampler's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.engine.loop import StepAt
from medloop.plugins.staining.checks import StainInputError
from medloop.plugins.staining.cyclegan import (
    CycleGANConfig,
    CycleGANStep,
    GeneratorSpec,
    PatchDiscriminator,
    ResNetGenerator,
    ResUNetGenerator,
    build_cyclegan,
    count_parameters,
    identity_weight,
    train_cyclegan,
    translate,
)
from medloop.plugins.staining.evaluation import evaluate_transfer
from medloop.plugins.staining.sampling import PatchSampler, tissue_mask


@pytest.mark.parametrize("depth, paper", [(1, 0.11e6), (2, 0.45e6), (3, 2.0e6)])
def test_unet_parameter_counts_match_the_paper(depth, paper):
    assert abs(count_parameters(ResUNetGenerator(depth, 32)) / paper - 1) <= 0.25


def test_resnet_baseline_has_2_8_million_parameters():
    assert abs(count_parameters(ResNetGenerator(32, 9)) / 2.8e6 - 1) <= 0.10


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_generator_maps_rgb_to_rgb_in_minus_one_one(depth):
    torch.manual_seed(0)
    g = ResUNetGenerator(depth, 8)
    x = torch.rand(2, 3, 48, 40) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    if depth == 3:  # 48 and 40 are multiples of 8
        with pytest.raises(StainInputError, match="multiples of 8"):
            g(torch.rand(1, 3, 44, 40))
    assert ResNetGenerator(8, 2)(x).shape == x.shape


def test_patchgan_is_70px_patch_scores():
    d = PatchDiscriminator(16, 3)
    assert d(torch.rand(1, 3, 70, 70)).shape == (1, 1, 6, 6)
    assert abs(count_parameters(d) / 0.18e6 - 1) < 0.05  # the spec's 0.18 M at 16 filters


def test_translate_pads_any_size_and_keeps_shape():
    torch.manual_seed(0)
    g = ResUNetGenerator(2, 4)
    out = translate(np.random.default_rng(0).random((37, 29, 3)), g)
    assert out.shape == (37, 29, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


def test_identity_weight_anneals_to_exactly_zero():
    assert identity_weight(0, 5.0, 20) == 5.0
    assert identity_weight(10, 5.0, 20) == 2.5
    assert all(identity_weight(e, 5.0, 20) == 0.0 for e in (20, 20.5, 50, 1000))
    config = CycleGANConfig(epochs=10, steps_per_epoch=4)
    assert config.anneal == 2.0  # 20 % of training


def test_step_uses_the_annealed_weight_and_owns_both_optimisers():
    config = CycleGANConfig(generator=GeneratorSpec(depth=1, width=4), disc_width=4, patch=32, batch=2,
                            epochs=5, steps_per_epoch=2)
    model = build_cyclegan(config)
    step = CycleGANStep(model, config)
    assert step.opt_g.defaults["betas"] == (0.5, 0.999) and step.opt_d.defaults["betas"] == (0.5, 0.999)
    owned = {id(p) for o in (step.opt_g, step.opt_d) for g in o.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.parameters()}
    batch = (torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1)
    seen = [step(batch, StepAt(done // 2, done % 2, done, 10))["lambda_id"] for done in range(4)]
    assert seen == [5.0, 2.5, 0.0, 0.0]  # anneal = 1 epoch = 2 steps


def test_cyclegan_smoke_40_steps(gareau_data):
    """Check 6: the §3 preset (U-Net depth 2 width 16, PatchGAN 16, 64 px, batch 6, lr 0.008, 40
    steps, seed 0) on the held-out quarter. [ours] 0.30x, 0.23, 0.82, +3.7 dB (about 20 s)."""
    config = CycleGANConfig()
    assert (config.generator.depth, config.generator.width, config.patch, config.batch, config.lr,
            config.epochs * config.steps_per_epoch) == (2, 16, 64, 6, 0.008, 40)
    start = build_cyclegan(config)
    before = evaluate_transfer(start["G"], start["F"], gareau_data, normalisers=False)
    sampler = PatchSampler([gareau_data.train_a], [gareau_data.train_b], config.patch, config.batch, ("otsu", "adaptive"))
    result = train_cyclegan(sampler, config)
    after = evaluate_transfer(result.model["G"], result.model["F"], gareau_data, normalisers=False)
    assert after["cycle_l1"] <= 0.5 * before["cycle_l1"], (before, after)
    assert after["wd_ratio"] <= 0.5, after
    assert after["ssim_grey_input_output"] >= 0.6, after
    assert after["psnr_output"] >= after["psnr_input"] + 1.5, after
    assert [h["train_lambda_id"] for h in result.history][2:] == [0.0] * 8


def test_patch_too_small_for_the_discriminator():
    with pytest.raises(StainInputError, match="patch 16 px is too small for a 3-layer PatchGAN; use at least 32"):
        train_cyclegan(lambda: None, CycleGANConfig(patch=16))


def test_sampler_draws_tissue_patches_and_resumes(gareau_data):
    sampler = PatchSampler([gareau_data.train_a], [gareau_data.train_b], 32, 4, seed=3)
    a, b = sampler()
    assert a.shape == b.shape == (4, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    state = sampler.state_dict()
    again = sampler()
    sampler.load_state_dict(state)
    assert torch.equal(sampler()[0], again[0])


def test_tissue_masks():
    white = np.ones((64, 64, 3))
    assert not tissue_mask(white, "adaptive").any() and not tissue_mask(white, "otsu").any()
    noisy_glass = np.clip(0.95 + np.random.default_rng(0).normal(0, 0.005, (64, 64, 3)), 0, 1)
    assert tissue_mask(noisy_glass, "adaptive").mean() < 0.01
    spots = np.ones((64, 64, 3))
    spots[20:40, 20:40] = 0.4
    assert tissue_mask(spots, "otsu")[25:35, 25:35].all() and not tissue_mask(spots, "otsu")[:10].any()


def test_sampler_errors(gareau_data):
    b = [gareau_data.train_b]
    with pytest.raises(StainInputError, match="domain A has no tissue"):
        PatchSampler([np.ones((64, 64, 3))], b, 32, 2)
    with pytest.raises(StainInputError, match="patch 64 px is larger than domain B image 0 .40x300"):
        PatchSampler([gareau_data.train_a], [np.random.default_rng(0).random((40, 300, 3))], 64, 2)
    spot = np.ones((40, 40, 3))
    spot[19:21, 19:21] = 0.2  # a tiny piece of tissue: few positions where a 32 px patch is centred on it
    with pytest.raises(StainInputError, match="fewer than the batch of 6"):
        PatchSampler([spot], b, 32, 6)
    with pytest.raises(StainInputError, match="domain B has no images"):
        PatchSampler([gareau_data.train_a], [], 32, 2)
