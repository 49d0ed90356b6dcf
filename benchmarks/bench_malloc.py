"""The allocator setting of ``deconvnet.runtime``, on and off, side by side: seconds per solve
and peak resident memory of a process running each case.

    python benchmarks/bench_malloc.py [--threads 2] [--reps 5] [--json out.json]

Each (case, setting) runs in its own process (the setting is per process), the settings
alternate within every case, and a case is timed ``--reps`` times after one warm-up solve.
Cases: the paper's layer 3 (150 maps of 7x7 on 45 maps of 112x112, random pairs,
continuation), a BSDS500-sized layer 1 (64 maps of 7x7 on 481x321, FISTA, 30 iterations) and
the coding problem of bench_coding (FISTA, circular, 100 iterations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
import deconvnet as dn
from deconvnet.connectivity import connectivity
case, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
dn.runtime.configure()
gen = torch.Generator().manual_seed(0)
if case == "layer3":
    K, C, s, H = 150, 45, 7, 112
    g = torch.as_tensor(connectivity("random-pairs", K, C, seed=0))
    f = dn.init_filters(K, C, s, g, seed=1)
    y = torch.randn(1, C, H, H, generator=gen) * (torch.rand(1, C, H, H, generator=gen) < 0.05)
    kw = dict(lam=1.0, p=1.0, g=g, method="continuation")
elif case == "bsds":
    f = dn.init_filters(64, 1, 7, seed=1)
    y = torch.randn(1, 1, 321, 481, generator=gen)
    kw = dict(lam=1.0, method="fista", max_iter=30, tol=1e-12, flush_denormals=True)
else:
    sys.path.insert(0, sys.argv[4])
    from common import camera_problem
    yn, fn = camera_problem()
    y = torch.from_numpy(yn).float()[None, None]
    f = torch.from_numpy(fn).float()[:, None]
    kw = dict(lam=20.0, method="fista", boundary="circular", max_iter=100, tol=1e-12, flush_denormals=True)
dn.sparse_code(y, f, **kw)
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    dn.sparse_code(y, f, **kw)
    times.append(time.perf_counter() - t0)
print(json.dumps({"tuned": dn.runtime.allocator_tuned(), "times": times,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CASES = ("layer3", "bsds", "coding")


def run_child(case: str, tuning: bool, threads: int, reps: int) -> dict:
    env = dict(os.environ, DECONVNET_MALLOC_TUNING="1" if tuning else "0")
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(threads), str(reps), str(Path(__file__).parent)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of off/on per case")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import environment  # noqa: PLC0415

    import torch  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    print(f"# {environment('cpu')}")
    print(f"{'case':<8}{'malloc':>8}{'best s':>9}{'median s':>10}{'peak RSS MB':>13}")
    rows = []
    for case in CASES:
        res = {False: [], True: []}
        rss = {False: 0.0, True: 0.0}
        for _ in range(args.rounds):
            for tuning in (False, True):
                r = run_child(case, tuning, args.threads, args.reps)
                if r["tuned"] != tuning and tuning:
                    print(f"# {case}: the setting is not available on this platform")
                res[tuning] += r["times"]
                rss[tuning] = max(rss[tuning], r["peak_rss_mb"])
        for tuning in (False, True):
            t = sorted(res[tuning])
            row = {"case": case, "malloc_tuning": tuning, "best_s": t[0], "median_s": t[len(t) // 2],
                   "peak_rss_mb": rss[tuning]}
            rows.append(row)
            print(f"{case:<8}{'tuned' if tuning else 'default':>8}{t[0]:>9.3f}{t[len(t) // 2]:>10.3f}"
                  f"{rss[tuning]:>13.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": environment("cpu"), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
