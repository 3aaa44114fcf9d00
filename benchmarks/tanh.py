"""How much faster than ATen's float32 tanh is ours, and how far from the exact value?

On the CPU, float32 tensors of a few sizes (a 128-state minibatch of a 64-wide layer, a 2048-state
batch, one million elements), timed per element, in one run:
  * ours      – trpo_torchrl::tanh (csrc/tanh.cpp: the widest vector unit the CPU has), out of place
  * ours_     – trpo_torchrl::tanh_, in place
  * aten      – torch.tanh
and the largest error of ours in units in the last place (against float64's tanh).

    python benchmarks/tanh.py [--threads 1] [--quick] [--out tanh.json]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, write_json  # noqa: E402

from trpo_torchrl.ops import extension_loaded

SIZES = (128 * 64, 2048 * 64, 1_000_000)


def max_ulp_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |y − tanh(x)| in units of the last place of the float32 nearest tanh(x)."""
    exact = torch.tanh(x.double())
    nearest = exact.float().abs()
    ulp = (torch.nextafter(nearest, torch.tensor(math.inf)) - nearest).double()
    return ((y.double() - exact).abs() / ulp).max().item()


def bench(numel: int, reps: int) -> dict:
    cpu = torch.device("cpu")
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0)) * 3
    buf = x.clone()
    ours = torch.ops.trpo_torchrl.tanh
    ours_ = torch.ops.trpo_torchrl.tanh_

    def in_place():
        buf.copy_(x)  # the same input every call; the copy is timed on both sides of the ratio
        ours_(buf)

    def aten_in_place():
        buf.copy_(x)
        buf.tanh_()

    ns = {
        "ours": median_ms(lambda: ours(x), cpu, reps) * 1e6 / numel,
        "aten": median_ms(lambda: torch.tanh(x), cpu, reps) * 1e6 / numel,
        "ours_": median_ms(in_place, cpu, reps) * 1e6 / numel,
        "aten_": median_ms(aten_in_place, cpu, reps) * 1e6 / numel,
    }
    row = {"numel": numel, **{f"{k}_ns_per_element": v for k, v in ns.items()}}
    row["aten_over_ours"] = ns["aten"] / ns["ours"]
    row["aten_over_ours_in_place"] = ns["aten_"] / ns["ours_"]
    row["max_ulp_error"] = max_ulp_error(x, ours(x))
    print(
        f"{numel:>9} {ns['ours']:>8.3f} {ns['aten']:>8.3f} {row['aten_over_ours']:>8.2f}x "
        f"{ns['ours_']:>8.3f} {ns['aten_']:>8.3f} {row['aten_over_ours_in_place']:>8.2f}x "
        f"{row['max_ulp_error']:>7.2f}",
        flush=True,
    )
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="the smallest size only, few repeats")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not extension_loaded():
        sys.exit("tanh.py times the compiled kernel: build the extension first (python setup.py build_ext --inplace)")
    torch.set_num_threads(args.threads)
    sizes, reps = (SIZES[:1], 5) if args.quick else (SIZES, args.reps)
    print(f"float32 tanh on the CPU, {args.threads} thread(s): ns per element (median of {reps})")
    print(f"{'numel':>9} {'ours':>8} {'aten':>8} {'ratio':>9} {'ours_':>8} {'aten_':>8} {'ratio':>9} {'ulp':>7}")
    rows = [bench(n, reps) for n in sizes]
    if args.out:
        write_json(args.out, {"benchmark": "tanh", "machine": machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
