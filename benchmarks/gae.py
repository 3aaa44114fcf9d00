"""How fast is our fused GAE scan against TorchRL's, and how close to memory bandwidth?

For each (B, T) in the grid, on CPU and (when present) CUDA, times:
  * ours      – trpo_torchrl.ops.generalized_advantage_estimate on [B, T, 1] float32 tensors
  * op        – the raw trpo_torchrl::gae op on [B, T] views (no Python-side checks); on CUDA,
                replayed from a CUDA graph so the figure is device time
  * vec       – torchrl's vec_generalized_advantage_estimate (the one its GAE uses by default)
  * loop      – torchrl's generalized_advantage_estimate (a Python loop over time)
  * copy      – a plain tensor copy moving the same number of bytes, timed in the same run
and prints elements/s, effective GB/s (bytes read + written: 3 float inputs + 2 bool flags in,
2 float outputs out = 22 B per element in float32) and the ratios.

    python benchmarks/gae.py                 # CPU grid (+ CUDA grid when a GPU is present)
    python benchmarks/gae.py --quick         # a few sizes, for a smoke run
    python benchmarks/gae.py --out gae.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torchrl.objectives.value.functional import generalized_advantage_estimate as torchrl_loop
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate as torchrl_vec

import trpo_torchrl
from trpo_torchrl.ops import extension_loaded, generalized_advantage_estimate

CPU_GRID = [(1, 2048), (16, 2048), (64, 1024), (1024, 256), (4096, 128), (16384, 256), (1, 1_000_000)]
CUDA_GRID = CPU_GRID + [(8192, 2048)]
QUICK_GRID = [(1, 2048), (64, 1024), (1024, 256)]
BYTES_PER_ELEMENT = 3 * 4 + 2 * 1 + 2 * 4
# TorchRL's vectorised GAE builds a [*, T, T]-sized filter: skip it (and the Python loop) where
# one call would take minutes or run out of memory.
PEER_MAX_ELEMENTS = 4_300_000
PEER_MAX_T = 4096


def timeit(fn, device: str, min_time: float = 0.2, max_reps: int = 200) -> float:
    """Median seconds per call, after one warm-up call."""
    fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cuda_graph_time(fn, reps: int = 20) -> float:
    """Device seconds per call of fn, replayed from a CUDA graph (no launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / reps)
    return best


def bench_case(B: int, T: int, device: str) -> dict:
    n = B * T
    shape = (B, T, 1)
    gen = torch.Generator(device=device).manual_seed(0)
    v, nv, r = (torch.randn(shape, device=device, generator=gen) for _ in range(3))
    done = torch.rand(shape, device=device, generator=gen) < 0.01
    term = done & (torch.rand(shape, device=device, generator=gen) < 0.5)
    gamma, lmbda = 0.99, 0.95
    row = {"device": device, "B": B, "T": T, "elements": n}

    row["ours_s"] = timeit(lambda: generalized_advantage_estimate(gamma, lmbda, v, nv, r, done, term), device)
    if extension_loaded():
        rows = [
            torch.full((), gamma, device=device).expand(B, T),
            torch.full((), lmbda, device=device).expand(B, T),
        ] + [t.view(B, T) for t in (v, nv, r, done, term)]
        op = lambda: torch.ops.trpo_torchrl.gae(*rows)  # noqa: E731
        row["op_s"] = cuda_graph_time(op) if device == "cuda" else timeit(op, device)
    # the same bytes through a plain copy: read N/2 and write N/2 bytes
    src = torch.empty(n * BYTES_PER_ELEMENT // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    row["copy_s"] = cuda_graph_time(copy) if device == "cuda" else timeit(copy, device)
    if n <= PEER_MAX_ELEMENTS and T <= PEER_MAX_T:
        row["torchrl_vec_s"] = timeit(lambda: torchrl_vec(gamma, lmbda, v, nv, r, done, term), device, max_reps=20)
        row["torchrl_loop_s"] = timeit(lambda: torchrl_loop(gamma, lmbda, v, nv, r, done, term), device, max_reps=20)
    best = row.get("op_s", row["ours_s"])
    row["ours_elements_per_s"] = n / row["ours_s"]
    row["ours_GBps"] = n * BYTES_PER_ELEMENT / row["ours_s"] / 1e9
    row["op_GBps"] = n * BYTES_PER_ELEMENT / best / 1e9
    row["copy_GBps"] = n * BYTES_PER_ELEMENT / row["copy_s"] / 1e9
    row["op_fraction_of_copy"] = row["copy_s"] / best
    for peer in ("torchrl_vec", "torchrl_loop"):
        if f"{peer}_s" in row:
            row[f"speedup_vs_{peer}"] = row[f"{peer}_s"] / row["ours_s"]
    return row


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trpo_torchrl": trpo_torchrl.__version__,
        "extension_loaded": extension_loaded(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'device':6} {'B':>6} {'T':>8} {'ours ms':>9} {'op ms':>9} {'Melem/s':>9} {'op GB/s':>8} "
        f"{'copy GB/s':>9} {'op/copy':>7} {'x vec':>7} {'x loop':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['device']:6} {r['B']:>6} {r['T']:>8} {r['ours_s'] * 1e3:>9.3f} "
            f"{fmt(r.get('op_s') and r['op_s'] * 1e3, '9.3f'):>9} {r['ours_elements_per_s'] / 1e6:>9.1f} "
            f"{r['op_GBps']:>8.1f} {r['copy_GBps']:>9.1f} {r['op_fraction_of_copy']:>7.2f} "
            f"{fmt(r.get('speedup_vs_torchrl_vec'), '7.0f'):>7} {fmt(r.get('speedup_vs_torchrl_loop'), '7.0f'):>7}"
        )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few small sizes only")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        grid = QUICK_GRID if args.quick else (CUDA_GRID if device == "cuda" else CPU_GRID)
        for B, T in grid:
            rows.append(bench_case(B, T, device))
    result = {"benchmark": "gae", "machine": machine(), "bytes_per_element": BYTES_PER_ELEMENT, "rows": rows}
    print(json.dumps(result["machine"]))
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
