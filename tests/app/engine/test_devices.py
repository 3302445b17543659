"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from medloop.app.engine.devices import DeviceError, autocast_for, available_devices, choose_device
from medloop.app.errors import MedloopError


@pytest.fixture
def cpu_only(monkeypatch):
    """A machine with a CPU-only PyTorch build and no Apple GPU, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")


def test_auto_picks_cpu_here():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    assert choose_device() == torch.device("cpu")
    assert choose_device("auto") == torch.device("cpu")
    assert available_devices() == ["cpu"]


def test_auto_without_gpus_is_cpu(cpu_only):
    assert choose_device("auto") == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")
    assert available_devices() == ["cpu"]


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("mps")


def test_unavailable_cuda_is_an_error_naming_it(cpu_only):
    with pytest.raises(DeviceError) as info:
        choose_device("cuda")
    assert str(info.value) == (
        "cannot use device 'cuda': this PyTorch build (2.13.0+cpu) has no CUDA support; "
        "available devices: cpu"
    )
    assert isinstance(info.value, MedloopError)


def test_cuda_build_without_visible_gpu(cpu_only, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(DeviceError) as info:
        choose_device("cuda:0")
    assert str(info.value) == (
        "cannot use device 'cuda:0': no CUDA GPU is visible (check the NVIDIA driver and "
        "CUDA_VISIBLE_DEVICES); available devices: cpu"
    )


def test_missing_gpu_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert choose_device("cuda:0") == torch.device("cuda", 0)
    assert choose_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError) as info:
        choose_device("cuda:1")
    assert str(info.value) == (
        "cannot use device 'cuda:1': this machine has 1 CUDA GPU; available devices: cpu, cuda:0"
    )


def test_mps_and_unknown_names(cpu_only):
    with pytest.raises(DeviceError) as info:
        choose_device("mps")
    assert str(info.value) == (
        "cannot use device 'mps': Apple MPS is not available on this machine; available devices: cpu"
    )
    with pytest.raises(DeviceError) as info:
        choose_device("tpu")
    assert str(info.value) == (
        "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps (available devices: cpu)"
    )


def test_autocast_is_a_no_op_on_cpu():
    ctx = autocast_for(torch.device("cpu"))
    assert isinstance(ctx, contextlib.nullcontext)
    assert isinstance(autocast_for("cpu", False), contextlib.nullcontext)
    a = torch.randn(8, 8)
    with autocast_for("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32


def test_autocast_on_cpu_when_asked():
    a = torch.randn(8, 8)
    with autocast_for("cpu", True):
        assert (a @ a).dtype == torch.bfloat16


def test_autocast_defaults_on_for_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only build warns that CUDA autocast is unavailable
        ctx = autocast_for(torch.device("cuda"))
        assert isinstance(ctx, torch.autocast)
        assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16
        assert isinstance(autocast_for("cuda:0", False), contextlib.nullcontext)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_on_cpu_inside_the_block_only_and_same_output(dims):
    from medloop.app.engine.devices import channels_last_on_cpu
    from medloop.models.nets import build_network

    torch.manual_seed(0)
    net = build_network(f"unet{dims}d", spatial_dims=dims, in_channels=1, out_channels=3, features=[4, 8], norm="group").eval()
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd) and m.in_channels > 1)
    x = torch.randn(2, 1, *(16,) * dims)
    with torch.inference_mode():
        before = net(x)
        with channels_last_on_cpu(net, lambda t: t):  # a plain callable is left alone
            assert conv.weight.is_contiguous(memory_format=layout) and not conv.weight.is_contiguous()
            inside = net(x)
    assert conv.weight.is_contiguous()
    torch.testing.assert_close(inside, before, rtol=0, atol=1e-4)


def test_channels_last_on_cpu_restores_the_layout_when_the_block_fails():
    from medloop.app.engine.devices import channels_last_on_cpu

    net = torch.nn.Conv2d(3, 5, 3)
    with pytest.raises(RuntimeError, match="stop"):
        with channels_last_on_cpu(net):
            assert net.weight.is_contiguous(memory_format=torch.channels_last)
            raise RuntimeError("stop")
    assert net.weight.is_contiguous()
