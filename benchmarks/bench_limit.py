"""The machine's limit (issue 4e): achieved throughput of our synthesis ``D`` plus adjoint
``D^T`` against the best that torch reaches on this machine.

For the coding problem's shapes (36 maps, 1 channel, 8x8 filters, 256x256 image) and for the
paper's layer 3 (150 maps on 45 inputs through 300 random-pair connections, 7x7 filters,
108x108 inputs), it prints:

- ``D + D^T``: time of one synthesis plus one adjoint, its useful arithmetic
  ``2 x 2 E H W s^2`` flops (``E`` connections, one multiply-add = 2 flops) as GFLOP/s, and the
  bytes it must at least move (read the maps and the input once, write both once) as GB/s;
- the references, timed in the same run: a dense ``conv2d`` of 64 -> 64 channels 3x3 on
  128x128 (oneDNN's best case: GFLOP/s), an FFT of the maps (``rfft2`` + ``irfft2``,
  ``2.5 N log2 N`` flops per real transform of ``N`` points), and a large ``torch.add``
  (GB/s: the memory bandwidth a streaming pass reaches).

Then, for the paper's three layers and the coding problem, every operator path of
:mod:`deconvnet.paths` forced in turn against the automatic choice, timed in the same way:
the choice must be the fastest of the paths that give the reference's numbers bit for bit.

Last, the filter update's operator for dense maps with the circular boundary
(:class:`deconvnet.ops.MapOperator`, ``f -> D_z f`` plus its adjoint ``G(z, r)``): the
convolution path (``G`` as a convolution with an image-sized kernel) against the DFT path
(used with full connectivity only), with the largest relative difference of ``G``.

    python benchmarks/bench_limit.py [--threads 2] [--repeat 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import environment, parse, path_table

import deconvnet as dn
from deconvnet.ops import ConvOperator


def best_time(fn, repeat: int, device: str) -> float:
    fn()
    best = np.inf
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def case(name, K, C, s, H, g, repeat, device):
    f = dn.init_filters(K, C, s, g, seed=0, dtype=torch.float32, device=device)
    op = ConvOperator(f, g)
    z = torch.randn(1, K, H + s - 1, H + s - 1, device=device).contiguous(memory_format=op.memory_format)
    r = torch.randn(1, C, H, H, device=device)
    E = op.n_connections
    t = best_time(lambda: (op.forward(z), op.adjoint(r)), repeat, device)
    flops = 2 * 2 * E * H * H * s * s
    nbytes = 4 * 2 * (z.numel() + r.numel())
    return {"case": name, "ms": 1e3 * t, "gflops": flops / t / 1e9, "gbs": nbytes / t / 1e9, "connections": E}


def forced_paths(name, K, C, s, H, g, repeat, device) -> str:
    """One line: the time of D + D^T with every path forced, and the automatic choice."""
    f = dn.init_filters(K, C, s, g, seed=0, dtype=torch.float32, device=device)
    auto = ConvOperator(f, g)
    chosen = auto.path_for((1, C, H, H))
    z = torch.randn(1, K, H + s - 1, H + s - 1, device=device).contiguous(memory_format=auto.memory_format)
    r = torch.randn(1, C, H, H, device=device)
    ref = (auto.forward(z, auto.reference_path), auto.adjoint(r, auto.reference_path))
    cells, times = [], {}
    for path in dn.paths.PATHS:
        op = ConvOperator(f, g, path=path)
        exact = torch.equal(op.forward(z), ref[0]) and torch.equal(op.adjoint(r), ref[1])
        t = best_time(lambda: (op.forward(z), op.adjoint(r)), repeat, device)
        if exact:
            times[str(path)] = t
        cells.append(f"{1e3 * t:>22.2f}{' ' if exact else '!'}")
    fastest = min(times, key=times.get)
    verdict = "yes" if str(chosen) == fastest else f"no ({fastest})"
    within = times[str(chosen)] / times[fastest]
    return f"{name:<40} {str(chosen):<24}" + "".join(cells) + f"   {verdict:<8} {within:.2f}x"


def map_operator(name, B, K, C, s, H, g, repeat, device) -> str:
    """One line: ``D_z f`` + ``G(z, r)`` for dense circular maps, convolution path against DFT path."""
    from deconvnet.ops import MapOperator

    gen = torch.Generator().manual_seed(0)
    f = dn.init_filters(K, C, s, g, seed=0, dtype=torch.float32).to(device)
    op = ConvOperator(f, g, "circular")
    z = (torch.randn(B, K, H, H, generator=gen) * (torch.rand(B, K, H, H, generator=gen) < 0.1)).to(device)
    r = torch.randn(B, C, H, H, generator=gen).to(device)
    fourier = MapOperator(z, op, sparse=False)
    used = fourier.Zh is not None  # the library takes the DFT path here
    if not used:  # sparse connectivity: the DFT path, forced for the comparison
        fourier.Zh = torch.fft.rfft2(z)
    conv = MapOperator(z, op, sparse=False)
    conv.Zh = None  # the convolution path
    t_conv = best_time(lambda: (conv.apply(f), conv.adjoint(r)), repeat, device)
    t_dft = best_time(lambda: (fourier.apply(f), fourier.adjoint(r)), repeat, device)
    t_init = best_time(lambda: MapOperator(z, op, sparse=False), repeat, device) if used else float("nan")
    Gc, Gf = conv.adjoint(r), fourier.adjoint(r)
    if g is not None:  # the forced DFT path leaves unconnected planes unmasked
        Gf = Gf * torch.as_tensor(g, dtype=Gf.dtype, device=device)[:, :, None, None]
    diff = float((Gc - Gf).abs().max() / Gc.abs().max())
    return (f"{name:<44}{1e3 * t_conv:>10.2f}{1e3 * t_dft:>10.2f}{t_conv / t_dft:>9.1f}x"
            f"{1e3 * t_init:>12.2f}{diff:>12.1e}   {'DFT' if used else 'conv'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    args = parse(ap, device=True, json=False)
    dev = args.device
    rows = [case("coding: 36 maps, 8x8, 256x256", 36, 1, 8, 256, None, args.repeat, dev)]
    g3 = dn.connectivity("random-pairs", 150, 45, seed=3)
    rows.append(case("paper layer 3: 150 on 45, 7x7, 108x108", 150, 45, 7, 108, g3, args.repeat, dev))

    x = torch.randn(1, 64, 128, 128, device=dev)
    w = torch.randn(64, 64, 3, 3, device=dev)
    t_conv = best_time(lambda: F.conv2d(x, w, padding=1), args.repeat, dev)
    conv_gflops = 2 * 64 * 64 * 9 * 128 * 128 / t_conv / 1e9
    m = torch.randn(36, 263, 263, device=dev)
    t_fft = best_time(lambda: torch.fft.irfft2(torch.fft.rfft2(m), s=m.shape[-2:]), args.repeat, dev)
    N = 263 * 263
    fft_gflops = 36 * 2 * 2.5 * N * np.log2(N) / t_fft / 1e9
    a, b = torch.randn(2, 32 * 1024 * 1024, device=dev)
    out = torch.empty_like(a)
    t_add = best_time(lambda: torch.add(a, b, out=out), args.repeat, dev)
    bandwidth = 3 * 4 * a.numel() / t_add / 1e9

    print(f"# {environment(dev)}")
    print(f"{'operation':<44}{'ms':>8}{'GFLOP/s':>9}{'GB/s':>7}{'% conv peak':>12}{'% bandwidth':>12}")
    for r in rows:
        print(f"{'D + D^T, ' + r['case']:<44}{r['ms']:>8.2f}{r['gflops']:>9.1f}{r['gbs']:>7.1f}"
              f"{100 * r['gflops'] / conv_gflops:>11.0f}%{100 * r['gbs'] / bandwidth:>11.0f}%")
    print(f"{'conv2d 64->64 3x3 128x128 (reference)':<44}{1e3 * t_conv:>8.2f}{conv_gflops:>9.1f}")
    print(f"{'rfft2+irfft2 of 36 263x263 maps (reference)':<44}{1e3 * t_fft:>8.2f}{fft_gflops:>9.1f}")
    print(f"{'torch.add of 2 x 128 MB (reference)':<44}{1e3 * t_add:>8.2f}{'':>9}{bandwidth:>7.1f}")
    print()
    print("every path forced (ms for D + D^T, best of --repeat; ! = not bit-identical to the reference):")
    print(f"{'operator':<40} {'automatic choice':<24}" + "".join(f"{str(p):>23}" for p in dn.paths.PATHS)
          + "   fastest? auto/fastest")
    g2 = dn.connectivity("singles+pairs", 45, 9)
    for args_ in [("coding: 36 maps, 8x8, 256x256", 36, 1, 8, 256, None),
                  ("paper layer 1: 9 on 1, 7x7, 96x96", 9, 1, 7, 96, None),
                  ("paper layer 2: 45 on 9, 7x7, 102x102", 45, 9, 7, 102, g2),
                  ("paper layer 3: 150 on 45, 7x7, 108x108", 150, 45, 7, 108, g3)]:
        print(forced_paths(*args_, args.repeat, dev))
    print()
    print("filter update, dense circular maps (ms for D_z f + G(z, r), best of --repeat; DFT set-up once per update):")
    print(f"{'maps':<44}{'conv':>10}{'DFT':>10}{'speed-up':>10}{'DFT set-up':>12}{'max rel diff':>13}   used")
    for args_ in [("dictlearn: 10 images 128x128, 16 maps 8x8", 10, 16, 1, 8, 128, None),
                  ("coding: 36 maps 8x8, 256x256", 1, 36, 1, 8, 256, None),
                  ("4 images 96x96, 64 maps 11x11", 4, 64, 1, 11, 96, None),
                  ("45 on 9 (singles+pairs), 7x7, 102x102", 1, 45, 9, 7, 102, g2)]:
        print(map_operator(*args_, args.repeat, dev))
    print(path_table())


if __name__ == "__main__":
    main()
