"""Smoke tests of the side-by-side benchmarks: each script's --tiny mode runs end to end and writes
its JSON (and PNG). The sb3-contrib side runs only where sb3_contrib is importable (the bench
extra); CI installs the test extras only, so there the scripts time and train ours alone.
benchmarks/gae.py and cg.py are left out: their quickest modes take tens of seconds here."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytest.importorskip("gymnasium")


def load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sb3_installed() -> bool:
    return importlib.util.find_spec("sb3_contrib") is not None


def test_update_benchmark_tiny(tmp_path):
    pytest.importorskip("mujoco")
    out = tmp_path / "update.json"
    result = load("update").main(["--tiny", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["ours"]["total_s"] > 0
    assert result["ours"]["actor_s"] > 0 and result["ours"]["critic_s"] > 0
    if sb3_installed():
        assert saved["speedup_of_medians"] > 0


def test_update_benchmark_tiny_with_torchrl_modules(tmp_path):
    pytest.importorskip("mujoco")
    out = tmp_path / "update.json"
    result = load("update").main(["--tiny", "--threads", "1", "--modules", "all", "--no-peer", "--out", str(out)])
    saved = json.loads(out.read_text())
    for kind, against in [("torchrl", "ours"), ("ours-nsd", "ours"), ("torchrl-nsd", "ours-nsd")]:
        assert saved[kind]["total_s"] > 0 and saved[kind]["vs"] == against and saved[kind]["ratio_median"] > 0
    # like for like: TorchRL's modules hold the same networks and take the same step as our factories'
    ours_step = result["ours_rows"][0]
    for kind, same_as in [("torchrl", ours_step), ("torchrl-nsd", result["ours-nsd"]["rows"][0])]:
        step = result[kind]["rows"][0]
        assert step["accepted"] == same_as["accepted"] and step["backtracks"] == same_as["backtracks"]
        assert step["kl"] == pytest.approx(same_as["kl"], rel=1e-4)
    only = load("update").main(["--tiny", "--threads", "1", "--modules", "torchrl", "--no-peer"])
    assert "torchrl" in only and "torchrl-nsd" not in only and "ours-nsd" not in only


def test_critic_fit_benchmark_quick(tmp_path):
    from trpo_torchrl.ops import extension_loaded

    if not extension_loaded():
        pytest.skip("compiled ops not built")
    out = tmp_path / "critic_fit.json"
    rows = load("critic_fit").main(["--device", "cpu", "--quick", "--states", "256", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == rows
    (row,) = rows
    assert row["adam_steps"] == 5 * 2 and min(row["ours_ms"], row["composite_ms"], row["eager_ms"]) > 0
    # the three kernels did the same fit
    assert row["composite_final_loss_rel_diff"] < 1e-4 and row["eager_final_loss_rel_diff"] < 1e-4


def test_throughput_benchmark_tiny(tmp_path):
    pytest.importorskip("mujoco")
    out = tmp_path / "throughput.json"
    result = load("throughput").main(["--tiny", "--threads", "1", "--out", str(out)])
    assert result["ours"][0]["frames"] == 256
    assert json.loads(out.read_text())["ours_fps"] > 0
    assert result["config"]["collector"] == "direct"  # the app's default
    if sb3_installed():
        assert result["peer"][0]["frames"] == 256
    sync = load("throughput").main(["--tiny", "--threads", "1", "--no-peer", "--collector", "sync"])
    assert sync["config"]["collector"] == "sync" and sync["ours"][0]["frames"] == 256


def test_learning_benchmark_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    result = load("learning").main(["--tiny", "--out", str(tmp_path)])
    assert (tmp_path / "learning.png").stat().st_size > 0
    summary = json.loads((tmp_path / "learning.json").read_text())["summary"]["CartPole-v1"]
    assert summary["ours"]["n"] == 1 and summary["ours"]["mean"] > 0
    assert ("sb3-contrib" in summary) == sb3_installed()
    assert result["runs"]["CartPole-v1"]["ours"][0][-1]["frames"] == 256


@pytest.mark.slow
def test_learning_benchmark_seeds_in_worker_processes_equal_one_after_another(tmp_path):
    import os
    import subprocess

    args = ["--tiny", "--seeds", "2", "--no-peer"]
    in_turn = load("learning").main(args)["runs"]["CartPole-v1"]["ours"]
    env = dict(os.environ, PYTHONPATH=str(BENCHMARKS.parent))
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "learning.py"), *args, "--jobs", "2", "--out", str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    in_workers = json.loads((tmp_path / "learning.json").read_text())["runs"]["CartPole-v1"]["ours"]
    assert len(in_workers) == 2
    for a, b in zip(in_workers, in_turn):  # seed order kept, same returns (the training is seeded)
        assert [c["return"] for c in a] == [c["return"] for c in b]


def test_learning_merge_pools_split_sweeps(tmp_path):
    learning = load("learning")
    both = learning.main(["--tiny", "--seeds", "2", "--no-peer"])
    for seed in (0, 1):
        learning.main(["--tiny", "--first-seed", str(seed), "--no-peer", "--out", str(tmp_path / f"s{seed}")])
    merged = learning.main(["--merge", str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(tmp_path / "m")])
    assert merged["seed_list"] == {"CartPole-v1": [1, 0]}

    # the pooled runs are the two-seed sweep's (all but the timings), in the inputs' order
    def points(curves):
        return [[(c["frames"], c["return"]) for c in curve] for curve in curves]

    assert points(merged["runs"]["CartPole-v1"]["ours"]) == points(both["runs"]["CartPole-v1"]["ours"])[::-1]
    assert merged["summary"]["CartPole-v1"]["ours"]["mean"] == pytest.approx(
        both["summary"]["CartPole-v1"]["ours"]["mean"]
    )
    assert json.loads((tmp_path / "m" / "learning.json").read_text())["summary"] == merged["summary"]
    # curves evaluated at more points are cut to the frames every run has
    learning.main(["--tiny", "--first-seed", "2", "--evals", "2", "--no-peer", "--out", str(tmp_path / "s2")])
    assert len(json.loads((tmp_path / "s2" / "learning.json").read_text())["runs"]["CartPole-v1"]["ours"][0]) == 2
    cut = learning.merge([str(tmp_path / "s0"), str(tmp_path / "s2")])["runs"]["CartPole-v1"]["ours"]
    assert [[c["frames"] for c in curve] for curve in cut] == [[256], [256]]
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0\] appear in more than one input"):
        learning.main(["--merge", str(tmp_path / "s0"), str(tmp_path / "m")])
    other = json.loads((tmp_path / "s0" / "learning.json").read_text())
    other["configs"]["CartPole-v1"]["max_kl"] *= 2
    other["seed_list"] = {"CartPole-v1": [7]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="differs from .* in max_kl"):
        learning.main(["--merge", str(tmp_path / "s1"), str(tmp_path / "other.json")])


def test_learning_statistics():
    learning = load("learning")
    assert learning.iqm([1, 2, 3, 100]) == 2.5  # the middle half of four seeds
    assert learning.iqm([5.0]) == 5.0
    lo, hi = learning.bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert learning.eval_iterations(15, 3) == {5, 10, 15}
    same = learning.compare([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert same["difference"] == 0.0 and same["permutation_p"] == 1.0  # every relabelling is as extreme
    apart = learning.compare([10.0, 11.0, 12.0, 13.0, 14.0], [0.0, 1.0, 2.0, 3.0, 4.0], reps=20_000)
    assert apart["difference"] == 10.0 and apart["percent_of_peer"] == 500.0
    assert apart["permutation_p"] == pytest.approx(2 / 252, abs=0.004)  # 2 of the C(10, 5) splits are as far apart
    assert apart["standard_error"] == pytest.approx(1.0)  # sqrt(2.5 / 5 + 2.5 / 5)
    assert 8.0 <= apart["ci95_difference"][0] < 10.0 < apart["ci95_difference"][1] <= 12.0


def test_trpo_vs_ppo_benchmark_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    result = load("trpo_vs_ppo").main(["--tiny", "--out", str(tmp_path)])
    assert (tmp_path / "trpo_vs_ppo.png").stat().st_size > 0
    algos = {row["algo"] for row in result["table"]}
    assert algos == {"trpo", "ppo"}
    assert all(row["fps"] > 0 for row in result["table"])


def test_parity_benchmark_matches_sb3_step():
    # needs the peer itself: runs where the bench extra is installed, skips in CI
    pytest.importorskip("sb3_contrib")
    pytest.importorskip("mujoco")
    module = load("parity")
    assert module.main(["--env", "Hopper-v5", "--iters", "1"]) == 0


def test_critic_fit_members_benchmark_quick(tmp_path):
    from trpo_torchrl.ops import extension_loaded

    if not extension_loaded():
        pytest.skip("compiled ops not built")
    out = tmp_path / "critic_members.json"
    rows = load("critic_fit").main(
        ["--device", "cpu", "--quick", "--states", "256", "--members", "1,2", "--out", str(out)]
    )
    assert json.loads(out.read_text())["rows"] == rows
    assert [row["members"] for row in rows] == [1, 2]
    for row in rows:
        assert row["adam_steps"] == 2 * 2 and min(row["batched_ms"], row["separate_ms"]) > 0
        assert row["final_loss_rel_diff"] < 1e-4  # one call and M calls did the same fits


@pytest.mark.slow
def test_learning_spaces_benchmark_tiny(tmp_path):
    out = tmp_path / "spaces.json"
    result = load("learning_spaces").main_(["--tiny", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["task"] for r in saved["runs"]] == [r["task"] for r in result["runs"]]
    assert len(result["runs"]) == 2
    for row in result["runs"]:
        assert 0 <= row["eval_mean"] <= 32 and 0 <= row["random_mean"] <= 32


def test_recurrent_benchmark_tiny(tmp_path):
    out = tmp_path / "recurrent.json"
    result = load("recurrent").main(["--tiny", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    for name in ("lstm", "gru", "mlp"):
        assert saved[name]["update_s"] > 0
    assert result["lstm"]["vs_mlp"] > 0


def test_population_collection_benchmark_tiny(tmp_path):
    out = tmp_path / "collection.json"
    argv = ["--collection", "--quick", "--e2e-envs", "CartPole-v1", "--e2e-members", "1,2", "--collect-steps", "8"]
    rows = load("population").main([*argv, "--out", str(out)])
    assert [r["members"] for r in rows] == [1, 2]
    assert all(v > 0 for r in rows for v in r["ms"].values()) and "+ workers" in rows[0]["ms"]
    assert json.loads(out.read_text())["collection"] == rows


def test_env_workers_layout_benchmark_tiny(tmp_path):
    import multiprocessing

    out = tmp_path / "layout.json"
    argv = ["--env", "CartPole-v1", "--members", "1,2", "--steps", "8", "--reps", "1", "--out", str(out)]
    rows = load("env_workers_layout").main(argv)
    assert [r["members"] for r in rows] == [1, 2]
    assert all(set(r["seconds"]) == {"here", "lockstep", "one"} for r in rows)
    assert json.loads(out.read_text())["rows"] == rows
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_population_end_to_end_benchmark_tiny(tmp_path):
    # whole `trpo-torchrl train` processes: --seeds 1, --seeds 2 (as chosen, and in one process) and two
    # single runs side by side
    out = tmp_path / "e2e.json"
    argv = ["--end-to-end", "--e2e-envs", "CartPole-v1", "--e2e-members", "1,2", "--e2e-frames", "1024"]
    rows = load("population").main([*argv, "--e2e-modes", "population,one_process,parallel", "--out", str(out)])
    assert [sorted(r["seconds"]) for r in rows] == [["population"], ["one_process", "parallel", "population"]]
    assert [r["processes"] for r in rows] == [1, 1]  # two members: one slice of two
    assert rows[0]["over_seeds1"]["population"] == 1.0 and rows[1]["cores"] >= 1
    assert json.loads(out.read_text())["end_to_end"][1]["seconds"] == rows[1]["seconds"]


@pytest.mark.slow
def test_learning_recurrent_benchmark_tiny(tmp_path):
    out = tmp_path / "recurrent_learning.json"
    result = load("learning_recurrent").main_(["--tiny", "--logdir", str(tmp_path / "runs"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["policy"] for r in saved["runs"]] == ["lstm", "mlp"] == [r["policy"] for r in result["runs"]]
    for row in result["runs"]:
        # the tiny runs' evaluation is the CLI's: a return of whole steps within CartPole's 500
        assert 1 <= row["eval_mean"] <= 500 and row["frames"] == 512
        assert (tmp_path / "runs" / f"CartPoleNoVel-v1__{row['policy']}__seed0" / "progress.csv").is_file()


@pytest.mark.slow
def test_population_vmas_benchmark_tiny(tmp_path):
    # M seeds on one VMAS env on the CPU: every phase timed, each M a row, the JSON as printed
    pytest.importorskip("vmas")
    out = tmp_path / "vmas.json"
    argv = ["--device", "cpu", "--members", "1,2", "--envs", "2", "--steps", "8", "--iterations", "1"]
    rows = load("population_vmas").main([*argv, "--out", str(out)])
    assert [r["members"] for r in rows] == [1, 2]
    assert all(set(r["phases"]) == {"collect", "advantages", "actor", "critic"} for r in rows)
    assert all(r["seconds_per_iteration"] > 0 for r in rows) and rows[0]["over_m1"] == 1.0
    assert json.loads(out.read_text())["vmas"] == rows
