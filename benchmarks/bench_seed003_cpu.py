"""Benchmark: seed 003's reduced-complexity network vs the plain 2-D U-Net, CPU inference.

    .venv/bin/python benchmarks/bench_seed003_cpu.py [--size 256] [--repeats 7] [--threads 1] [--norm batch]

Both networks at the paper's widths (64 ... 1024, five levels, four poolings: equal depth), one
input channel, two classes, in eval mode under ``torch.inference_mode``; one warm-up run, then the
median of ``--repeats`` forward passes on a 1 x 1 x size x size input. Prints times, parameter
counts and both ratios. Pandey et al. report 13.8x fewer parameters and faster training and
inference than U-Net, without inference numbers. Each net is timed in PyTorch's default NCHW layout
and in channels_last (which lets oneDNN run the depthwise and 1x1 convolutions).
"""

from __future__ import annotations

import argparse
import statistics
import time

PAPER_WIDTHS = (64, 128, 256, 512, 1024)


def multiply_adds(net, x) -> int:
    """Multiply-accumulates of the convolutions in one forward pass (hooks on every conv)."""
    import torch
    from torch import nn

    total = 0

    def count(module, _inputs, output):
        nonlocal total
        kernel = module.weight.shape[2:].numel()
        # A conv computes each output pixel from its kernel window; a transposed conv scatters
        # each input pixel through its kernel window: count over the outputs or the inputs.
        pixels = (_inputs[0] if isinstance(module, nn.ConvTranspose2d) else output)[0, 0].numel()
        total += pixels * kernel * (module.in_channels // module.groups) * module.out_channels

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.inference_mode():
        net(x)
    for h in hooks:
        h.remove()
    return total


def median_seconds(net, x, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        net(x)  # warm-up: allocator, kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (multiple of 16)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--norm", default="batch", help="normalisation of both nets (the paper's: batch)")
    args = parser.parse_args(argv)

    import torch

    from medloop.models.nets import ReducedUNet, UNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {
        "U-Net (Ronneberger)": UNet(2, 1, 2, PAPER_WIDTHS, norm=args.norm, up="transpose"),
        "reduced (Pandey, seed 003)": ReducedUNet(1, 2, PAPER_WIDTHS, norm=args.norm),
    }
    x = torch.randn(1, 1, args.size, args.size)
    rows = []
    for name, net in nets.items():
        net.eval()
        params = sum(p.numel() for p in net.parameters())
        macs = multiply_adds(net, x)
        nchw = median_seconds(net, x, args.repeats)
        # channels_last lets oneDNN take the depthwise and 1x1 convolutions (PyTorch's default
        # NCHW layout sends 1x1 convolutions to a slow im2col path on CPU).
        net = net.to(memory_format=torch.channels_last)
        nhwc = median_seconds(net, x.to(memory_format=torch.channels_last), args.repeats)
        rows.append((name, params, macs, nchw, nhwc))

    print(f"CPU inference, 1x1x{args.size}x{args.size}, median of {args.repeats}, {args.threads} thread(s), "
          f"torch {torch.__version__}, norm={args.norm}")
    print(f"{'network':<28}{'parameters':>14}{'GMAC':>9}{'ms NCHW':>10}{'ms channels_last':>18}")
    for name, params, macs, nchw, nhwc in rows:
        print(f"{name:<28}{params:>14,}{macs / 1e9:>9.2f}{nchw * 1e3:>10.1f}{nhwc * 1e3:>18.1f}")
    ratios = [a / b for a, b in zip(rows[0][1:], rows[1][1:])]
    print(f"{'ratio U-Net / reduced':<28}{ratios[0]:>13.2f}x{ratios[1]:>8.2f}x{ratios[2]:>9.2f}x{ratios[3]:>17.2f}x")
    print("paper: ~30 M vs ~2 M parameters, 13.8x fewer; faster inference claimed, not measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
