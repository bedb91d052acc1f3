"""The LU 1x1 convolution's log-determinant (O(C)) against ``slogdet`` of a plain weight (O(C^3)).

For C = 64 and 256 channels, times (median of many runs, one thread) the log-determinant with
its gradient, as a training step computes it, for ``invertible_conv1x1(C)`` and
``invertible_conv1x1(C, lu=False)``, and prints the ratio. Both give the same number for
the same W (checked).

    python benchmarks/conv1x1_logdet.py
    python benchmarks/conv1x1_logdet.py --channels 64,256,512 --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_flows.transforms import invertible_conv1x1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", default="64,256", help="comma-separated channel counts")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def seconds(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def logdet_with_grad(t):
    def step():
        t.zero_grad(set_to_none=True)
        t.log_abs_det().backward()

    return step


def main(args):
    torch.set_num_threads(args.threads)
    rows = []
    for c in [int(v) for v in args.channels.split(",")]:
        torch.manual_seed(0)
        lu = invertible_conv1x1(c).double()
        plain = invertible_conv1x1(c, lu=False).double()
        with torch.no_grad():
            plain.weight.copy_(lu.matrix())
        same = torch.allclose(lu.log_abs_det(), plain.log_abs_det(), atol=1e-8)
        t_lu = seconds(logdet_with_grad(lu), args.repeats)
        t_plain = seconds(logdet_with_grad(plain), args.repeats)
        rows.append((c, t_lu, t_plain, same))
    print("log|det W| with its gradient (float64, median):")
    print("| C | LU: sum of log abs(s) | plain: slogdet | slogdet / LU | same value |")
    print("|---|---|---|---|---|")
    for c, t_lu, t_plain, same in rows:
        print(
            f"| {c} | {1e6 * t_lu:.1f} µs | {1e6 * t_plain:.1f} µs | {t_plain / t_lu:.1f}x | {same} |"
        )
    return rows


if __name__ == "__main__":
    main(parse_args())
