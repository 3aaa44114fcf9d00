"""Learning curves from run directories: return against frames, mean ± std across runs (seeds)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import AppError


class PlotError(AppError):
    """Run directories or a progress.csv that cannot be plotted."""


def find_runs(paths) -> list[Path]:
    """Run directories (holding progress.csv) among ``paths`` and their subfolders."""
    runs = []
    for p in map(Path, paths):
        if (p / "progress.csv").is_file():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(q.parent for q in p.rglob("progress.csv"))
        else:
            raise PlotError(f"plot: {str(p)!r} is not a run directory")
    if not runs:
        raise PlotError(f"plot: no progress.csv under {', '.join(map(str, paths))}")
    return runs


def read_curve(run: Path, column: str = "train_return") -> tuple[np.ndarray, np.ndarray]:
    """``column`` against frames from a run's progress.csv (rows where it is empty are skipped)."""
    path = run / "progress.csv"
    frames, values = [], []
    with path.open() as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for needed in ("frames", column):
            if needed not in header:
                raise PlotError(f"plot: {str(path)!r} has no column {needed!r} (it has: {', '.join(header)})")
        for line, row in enumerate(reader, start=2):
            value = row.get(column, "")
            if value in ("", None):
                continue
            try:
                number, frame = float(value), float(row["frames"])
            except (TypeError, ValueError):
                raise PlotError(
                    f"plot: {str(path)!r} line {line}: {column}={value!r}, frames={row['frames']!r} are not numbers"
                ) from None
            if math.isfinite(number):
                frames.append(frame)
                values.append(number)
    return np.asarray(frames), np.asarray(values)


def _group_name(run: Path) -> str:
    """Runs that differ only by seed share a group: ``<env>__seed<k>__<time>`` -> ``<env>``."""
    name = run.name
    return name.split("__seed")[0] if "__seed" in name else name


def curve_after_training(paths, out: Path) -> str:
    """The end-of-training plot: its path, or why there is none (e.g. no episode ended yet)."""
    try:
        return str(plot_runs(paths, out))
    except ValueError as err:
        return f"not drawn ({err})"


def plot_runs(paths, out: str | Path, column: str = "train_return", points: int = 200) -> Path:
    """Writes a PNG of ``column`` against frames: one line per group of seeds, mean ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Path]] = defaultdict(list)
    for run in find_runs(paths):
        groups[_group_name(run)].append(run)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for name, runs in sorted(groups.items()):
        curves = [read_curve(r, column) for r in runs]
        curves = [(x, y) for x, y in curves if len(x)]
        if not curves:
            continue
        drawn += 1
        end = min(x[-1] for x, _ in curves)
        start = max(x[0] for x, _ in curves)
        grid = np.linspace(start, end, points) if end > start else np.array([end])
        ys = np.stack([np.interp(grid, x, y) for x, y in curves])
        mean, std = ys.mean(0), ys.std(0)
        ax.plot(grid, mean, label=f"{name} ({len(curves)} run{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
    if not drawn:
        plt.close(fig)
        raise PlotError(f"plot: no run has a finite value of {column!r} yet; nothing to draw")
    ax.set_xlabel("environment frames")
    ax.set_ylabel(column.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    if out.is_dir():
        out = out / "curves.png"
    elif not out.suffix:
        out = out.with_suffix(".png")  # what matplotlib would write; say so
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
