"""Segmentation networks: shapes, ``divisible_by``, the papers' parameter counts, the registry."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from medloop.app.errors import MedloopError
from medloop.models.nets import ARCHITECTURES, FactorisedUNet, ReducedUNet, UNet, build_network
from medloop.models.nets.factorised_unet import PLANES

torch.set_num_threads(1)

CLASSIC = (64, 128, 256, 512, 1024)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(build, *args, **kwargs) -> nn.Module:
    """Build a full-size net without allocating or initialising its weights (counts only)."""
    with torch.device("meta"):
        return build(*args, **kwargs)


# --- divisible_by: inputs of that multiple come back at their own size -------------------------

SMALL_NETS = [
    ("unet2d", lambda: UNet(2, 2, 3, (4, 8, 16)), (2, 2, 16, 24)),
    ("unet2d-bilinear-batch", lambda: UNet(2, 1, 2, (4, 8), norm="batch", up="bilinear", dropout=0.1), (2, 1, 6, 10)),
    ("unet3d", lambda: UNet(3, 1, 3, (4, 8)), (1, 1, 4, 6, 8)),
    ("unet3d-bilinear-instance", lambda: UNet(3, 1, 2, (4, 8, 8), norm="instance", up="bilinear"), (1, 1, 8, 4, 12)),
    ("reduced_unet", lambda: ReducedUNet(1, 3, (8, 16, 32)), (2, 1, 16, 12)),
    ("reduced_unet-2-levels", lambda: ReducedUNet(2, 2, (8, 16), norm=None), (1, 2, 6, 4)),
    ("factorised_unet", lambda: FactorisedUNet(1, 3, (4, 8, 16, 16)), (1, 1, 8, 16, 24)),
]


@pytest.mark.parametrize("name,build,shape", SMALL_NETS, ids=[s[0] for s in SMALL_NETS])
def test_divisible_input_keeps_its_spatial_size(name, build, shape):
    torch.manual_seed(0)
    net = build().eval()
    assert all(n % net.divisible_by == 0 for n in shape[2:])
    with torch.inference_mode():
        out = net(torch.randn(shape))
    assert out.shape[2:] == shape[2:] and out.shape[0] == shape[0]
    assert torch.isfinite(out).all()


def test_divisible_by_is_two_to_the_number_of_poolings():
    assert UNet(2, 1, 2, (4, 8, 16, 32)).divisible_by == 8
    assert UNet(3, 1, 2, (4, 8)).divisible_by == 2
    assert ReducedUNet(1, 2, (8, 16, 32)).divisible_by == 4
    assert FactorisedUNet().divisible_by == 8  # the paper's "2^3 * n"
    pools = [m for m in FactorisedUNet().modules() if isinstance(m, nn.MaxPool3d)]
    assert len(pools) == 1  # one module, applied three times (checked by the forward above)


def test_indivisible_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"divisible by 4; pad"):
        UNet(2, 1, 2, (4, 8, 16))(torch.zeros(1, 1, 16, 18))


def test_networks_train():
    """A few Adam steps on one tiny batch lower the loss for each architecture (gradients flow)."""
    torch.manual_seed(0)
    cases = [
        (UNet(2, 1, 2, (4, 8)), torch.rand(2, 1, 8, 8)),
        (ReducedUNet(1, 2, (8, 16), dropout=0.0), torch.rand(2, 1, 8, 8)),
        (FactorisedUNet(1, 2, (4, 8), dropout=0.0), torch.rand(1, 1, 4, 8, 8)),
    ]
    for net, x in cases:
        y = (x[:, 0] > 0.5).long()
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        losses = []
        for _ in range(15):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], (type(net).__name__, losses)


# --- parameter counts -----------------------------------------------------------------------------


def test_classic_unet_has_ronnebergers_31_million_parameters():
    count = n_params(on_meta(UNet, 2, 1, 2, CLASSIC, norm="batch", up="transpose"))
    print(f"\nclassic U-Net: {count:,} parameters")
    assert count == pytest.approx(31.0e6, rel=0.005)
    # Without normalisation (Ronneberger's original, 1 input channel, 2 classes): 31,030,658. Batch
    # norm adds a scale and shift to each of the 5,888 block channels and drops their conv biases.
    plain = n_params(on_meta(UNet, 2, 1, 2, CLASSIC, norm=None, up="transpose"))
    assert plain == 31_030_658 and count == plain + 5_888


def test_reduced_unet_is_about_13_8_times_smaller_than_unet():
    unet = n_params(on_meta(UNet, 2, 1, 2, CLASSIC, norm="batch", up="transpose"))
    reduced = n_params(on_meta(ReducedUNet, 1, 2, CLASSIC, norm="batch"))
    ratio = unet / reduced
    print(f"\nU-Net {unet:,} / reduced {reduced:,} = {ratio:.2f}x (paper: ~30 M / ~2 M, 13.8x)")
    assert reduced == pytest.approx(2.0e6, rel=0.15)
    assert ratio == pytest.approx(13.8, rel=0.15)


def test_reduced_unet_structure_matches_the_paper():
    net = ReducedUNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    kxk = [m for m in convs if m.kernel_size != (1, 1)]
    assert kxk and all(m.groups == m.in_channels == m.out_channels for m in kxk)  # all depthwise
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.Upsample)) for m in net.modules())
    assert sum(isinstance(m, nn.PixelShuffle) for m in net.modules()) == 1
    shortcuts = [b.shortcut for b in (*net.encoder, *net.decoder)]
    assert all(isinstance(s, nn.Conv2d) and s.kernel_size == (1, 1) for s in shortcuts if not isinstance(s, nn.Identity))
    # Innermost layer: 512 upsampled + 512 skip = 1024 deep.
    assert net.decoder[0].conv1[0].in_channels == 1024


def _factorised_weight_count(features, in_channels, out_channels, kernels) -> int:
    """Parameters of FactorisedUNet written out from its definition (the factorisation's arithmetic)."""
    volumes = [k[0] * k[1] * k[2] for k in kernels]

    def block(cin, c):
        return volumes[0] * cin * c + sum(v * c * c for v in volumes[1:]) + len(kernels) * c

    total, cin = 0, in_channels
    for c in features:
        total += block(cin, c)
        cin = c
    for deep, shallow in zip(features[:0:-1], features[-2::-1]):
        total += deep * shallow + shallow  # 1x1x1 up-convolution
        total += block(2 * shallow, shallow)
    return total + features[0] * out_channels + out_channels


def test_factorised_unet_has_only_2d_kernels_and_the_papers_widths():
    net = FactorisedUNet()
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert convs
    assert all(1 in m.kernel_size for m in convs)
    assert not any(m.kernel_size == (3, 3, 3) for m in convs)
    assert not any(isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d)) for m in net.modules())
    first = net.encoder[0]
    kernels = [m.kernel_size for m in first if isinstance(m, nn.Conv3d)]
    assert kernels == [(1, 3, 3), (3, 1, 3), (3, 3, 1), (1, 3, 3)]
    assert {m.out_channels for m in first if isinstance(m, nn.Conv3d)} == {30}
    # ReLU and dropout (keep probability 0.85) after every convolution.
    kinds = [type(m) for m in first]
    assert kinds == [nn.Conv3d, nn.ReLU, nn.Dropout] * 4 and first[2].p == pytest.approx(0.15)
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert len(ups) == 3 and all(m.kernel_size == (1, 1, 1) and m.stride == (2, 2, 2) for m in ups)


def test_factorised_unet_parameter_ratio_is_what_the_factorisation_implies():
    features = (30, 60, 120, 240)
    factorised = on_meta(FactorisedUNet, 1, 2, features)
    cubic_block = ((3, 3, 3), (3, 3, 3))  # the plain 3-D U-Net block, same widths and topology
    cubic = on_meta(FactorisedUNet, 1, 2, features, kernels=cubic_block)
    assert n_params(factorised) == _factorised_weight_count(features, 1, 2, PLANES)
    assert n_params(cubic) == _factorised_weight_count(features, 1, 2, cubic_block)
    ratio = n_params(factorised) / n_params(cubic)
    unet3d = n_params(on_meta(UNet, 3, 1, 2, features, norm=None))
    print(f"\nfactorised {n_params(factorised):,} / same-width 3x3x3 U-Net {n_params(cubic):,} = {ratio:.3f} "
          f"(36 vs 54 weights per channel pair: 0.667); vs UNet(3, norm=None, 2x2x2 up-convs) {unet3d:,}: "
          f"{n_params(factorised) / unet3d:.3f}")
    # Per block (9 cin + 27 c) / (27 cin + 27 c): 0.667 where the width is kept, 0.78 for the
    # encoder blocks that double it, 0.56 for the decoder blocks that halve it.
    assert 0.6 < ratio < 0.75

    # The same four convolutions with full 3x3x3 kernels hold exactly 3x the kernel weights (27 vs 9).
    def kernel_weights(net: nn.Module) -> int:
        return sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1))

    full = on_meta(FactorisedUNet, 1, 2, features, kernels=((3, 3, 3),) * 4)
    assert kernel_weights(full) == 3 * kernel_weights(factorised)


# --- registry -----------------------------------------------------------------------------------------


def test_build_network_by_name():
    assert set(ARCHITECTURES) >= {"unet2d", "unet3d", "reduced_unet", "factorised_unet"}
    net = build_network("unet3d", spatial_dims=3, in_channels=1, out_channels=2, features=[4, 8], norm="group")
    assert isinstance(net, UNet) and net.spatial_dims == 3
    assert isinstance(build_network("unet2d", in_channels=1, out_channels=2, features=[4, 8]), UNet)
    assert isinstance(build_network("reduced_unet", features=[8, 16]), ReducedUNet)
    assert isinstance(build_network("factorised_unet", features=[4, 8]), FactorisedUNet)


def test_build_network_errors_name_the_problem():
    with pytest.raises(MedloopError, match="unknown network architecture 'vnet'; known: factorised_unet, reduced_unet, unet2d, unet3d"):
        build_network("vnet")
    with pytest.raises(MedloopError, match="unexpected keyword argument 'widths'"):
        build_network("unet2d", in_channels=1, out_channels=2, widths=[4])
    with pytest.raises(MedloopError, match="unknown norm 'layer'"):
        build_network("unet2d", in_channels=1, out_channels=2, norm="layer")
    with pytest.raises(MedloopError, match="is 3-D; spatial_dims=2"):
        build_network("unet3d", spatial_dims=2, in_channels=1, out_channels=2)
    with pytest.raises(MedloopError, match="multiple of 4 channels"):
        build_network("reduced_unet", features=[6, 12, 24])


def test_importing_the_package_does_not_import_torch():
    code = "import sys, medloop.models.nets as n; assert 'torch' not in sys.modules; print(sorted(n.ARCHITECTURES))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "unet2d" in result.stdout
