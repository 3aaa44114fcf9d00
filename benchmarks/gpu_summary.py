"""Markdown summary of the JSON files benchmarks/run_gpu.sh writes (gae.json, cg.json,
critic_fit.json, update_cuda.json, update_cpu.json, population.json, population_vmas.json): the machine, then one table per list of
result rows.

    python benchmarks/gpu_summary.py bench_out/gpu > bench_out/gpu/results.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(folder: str) -> None:
    folder = Path(folder)
    print(f"# GPU benchmarks ({folder})\n")
    for name in ("gae", "cg", "critic_fit", "update_cuda", "update_cpu", "population", "population_vmas"):
        path = folder / f"{name}.json"
        if not path.exists():
            print(f"## {name}\n\nnot run (no {path.name})\n")
            continue
        data = json.loads(path.read_text())
        print(f"## {name}\n")
        print("machine: `" + json.dumps(data.get("machine", {})) + "`\n")
        if name.startswith("update"):
            ours = data["ours"]
            print(
                table(
                    [
                        {
                            "device": name.split("_")[1],
                            "states": data["states_per_batch"],
                            **{k: v * 1e3 for k, v in ours.items()},
                        }
                    ]
                ).replace("_s |", "_ms |")
            )
            print()
            continue
        for key in ("rows", "cg", "fvp", "vmas"):
            if data.get(key):
                print(f"### {key}\n\n{table(data[key])}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench_out/gpu")
