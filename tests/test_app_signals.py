"""Stopping a training run by signal: SIGTERM (what schedulers send on preemption) and Ctrl-C
(SIGINT) stop the loop at the next iteration boundary, write ``last.pt``, say how to resume and exit
with 128 + the signal's number; a second signal during the write does not tear it; under torchrun
every rank stops at the same iteration and the resumed run continues exactly."""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests._app_runs import TINY, app_config, progress_rows, start_cli, trainer_parameters
from tests._support import free_port
from trpo_torchrl.app import train as train_module
from trpo_torchrl.app.checkpoint import load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.train import Trainer, resume_trainer


def _wait_for_rows(run: Path, n: int, procs, timeout: float = 300.0) -> None:
    """Waits until ``run``'s progress.csv holds ``n`` rows (the loop is running), or fails."""
    deadline = time.monotonic() + timeout
    while len(progress_rows(run)) < n:
        if any(p.poll() is not None if hasattr(p, "poll") else not p.is_alive() for p in procs):
            pytest.fail("the training run ended before it was signalled")
        if time.monotonic() > deadline:
            pytest.fail(f"no {n} progress rows in {run} after {timeout} s")
        time.sleep(0.2)


def _reset_sigint():
    # Python ignores SIGINT in a process a non-interactive shell starts in the background; the
    # child gets the default disposition back, so Python installs its Ctrl-C handler
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_cli_run_at_an_iteration_with_a_checkpoint(tmp_path, capsys, sig, status):
    run = tmp_path / "run"
    cmd = ["train", "--logdir", str(tmp_path), "--run-name", "run", *TINY]
    cmd += ["--total-frames", "100000000", "--checkpoint-every", "0", "--eval-episodes", "0", "--logger", "none"]
    child = start_cli(cmd, preexec_fn=_reset_sigint)
    try:
        _wait_for_rows(run, 2, [child])
        child.send_signal(sig)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == status, err
    assert "Traceback" not in err
    last = run / "checkpoints" / "last.pt"
    assert f"{sig.name}: stopped after iteration" in out and f"--resume {last}" in out, out
    state = load_checkpoint(last)
    # the checkpoint is the state after its last logged iteration: nothing logged is missing from it
    assert state["iteration"] == len(progress_rows(run)) >= 2
    iterations = state["iteration"]

    code = main(["train", "--resume", str(run), "--total-frames", str((iterations + 1) * 128), "--progress", "false"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "final.pt")["iteration"] == iterations + 1
    assert [int(r["iteration"]) for r in progress_rows(run)] == list(range(1, iterations + 2))


def test_sigterm_stops_at_the_boundary_and_a_second_signal_waits_for_the_write(tmp_path, monkeypatch):
    """In process: SIGTERM during the second iteration; SIGINT and SIGTERM again while ``last.pt`` is
    written. The run stops after iteration 2, the file is whole, and resuming it equals a run that
    was never stopped."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = Trainer(app_config(tmp_path, "part", 100 * 128, checkpoint_every=0))
    steps, step = [0], Trainer.step

    def step_then_signal(self, batch):
        steps[0] += 1
        if steps[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # mid-iteration: the iteration still completes
        return step(self, batch)

    writes, save = [], train_module.save_checkpoint

    def save_under_fire(path, state):
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt if it were not deferred
        os.kill(os.getpid(), signal.SIGTERM)
        writes.append(Path(path).name)
        return save(path, state)

    monkeypatch.setattr(Trainer, "step", step_then_signal)
    monkeypatch.setattr(train_module, "save_checkpoint", save_under_fire)
    result = trainer.train()
    monkeypatch.undo()

    assert result.interrupted and result.stop_signal == signal.SIGTERM and result.exit_status == 143
    assert result.iterations == 2 and writes == ["last.pt"]
    assert load_checkpoint(result.checkpoint)["iteration"] == 2
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are given back

    full = Trainer(app_config(tmp_path, "full", 3 * 128))
    full.train()
    resumed = resume_trainer(result.checkpoint, {"total_frames": 3 * 128})
    assert resumed.iteration == 2
    resumed.train()
    expected, got = trainer_parameters(full), trainer_parameters(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    """The first Ctrl-C waits for the iteration boundary; a second one, before it, interrupts the
    run at once (KeyboardInterrupt, as before: the checkpoint of where it stood)."""
    trainer = Trainer(app_config(tmp_path, "run", 100 * 128, checkpoint_every=0))
    calls, next_batch = [0], Trainer.next_batch

    def twice(self):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return next_batch(self)

    monkeypatch.setattr(Trainer, "next_batch", twice)
    result = trainer.train()
    assert result.interrupted and result.exit_status == 130 and result.iterations == 1
    assert result.checkpoint.is_file()


def test_an_ignored_sigint_stays_ignored(tmp_path, monkeypatch):
    """A background job's SIGINT is ignored; the run does not take it over."""
    trainer = Trainer(app_config(tmp_path, "run", 2 * 128, checkpoint_every=0))
    seen, step = [], Trainer.step

    def step_and_look(self, batch):
        seen.append(signal.getsignal(signal.SIGINT))
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", step_and_look)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer.train()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN, signal.SIG_IGN]


# -- two learner ranks --------------------------------------------------------------------------------

FRAMES = 64  # 2 environments × 32 steps


def _rank(rank: int, world: int, port: int, logdir: str) -> None:
    """One learner rank, launched as torchrun launches one; trains until a signal stops it, then
    trains the same number of iterations plus one uninterrupted and by resuming."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    result = {}
    try:

        def config(name, frames):
            return app_config(Path(logdir), name, frames, steps_per_env=32, critic_minibatch=32, checkpoint_every=0)

        stopped = Trainer(config("part", 100_000 * FRAMES)).train()
        result.update(iterations=stopped.iterations, status=stopped.exit_status)
        if rank == 0:  # what rank 0 wrote on stopping, before the resumed run writes on
            state = load_checkpoint(stopped.checkpoint)
            result.update(saved_iteration=state["iteration"], saved_ranks=len(state["ranks"]))
        total = (stopped.iterations + 1) * FRAMES
        full = Trainer(config("full", total))
        full.train()
        resumed = resume_trainer(Path(logdir) / "part" / "checkpoints" / "last.pt", {"total_frames": total})
        result["resumed_at"] = resumed.iteration
        resumed.train()
        result["full"] = {k: v.clone() for k, v in trainer_parameters(full).items()}
        result["resumed"] = {k: v.clone() for k, v in trainer_parameters(resumed).items()}
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        torch.save(result, Path(logdir) / f"rank{rank}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    world, port = 2, free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, world, port, str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    try:
        _wait_for_rows(tmp_path / "part", 2, procs)
        os.kill(procs[1].pid, signal.SIGTERM)  # the rank that writes nothing
        for p in procs:
            p.join(timeout=300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r} failed:\n{res['error']}"
    r0, r1 = results
    assert r0["iterations"] == r1["iterations"] >= 2
    assert r0["status"] == r1["status"] == 143
    assert r0["saved_iteration"] == r0["iterations"] and r0["saved_ranks"] == world
    assert r0["resumed_at"] == r1["resumed_at"] == r0["iterations"]
    for key in r0["full"]:
        assert torch.equal(r0["full"][key], r0["resumed"][key]), f"{key}: the resumed run differs"
        assert torch.equal(r0["full"][key], r1["resumed"][key]), f"{key} differs between ranks"


@pytest.mark.slow
def test_sigterm_stops_a_seeds_group_at_one_iteration_and_the_group_resumes(tmp_path):
    group = tmp_path / "group"
    cmd = ["train", "--logdir", str(tmp_path), "--run-name", "group", *TINY]
    cmd += ["--seeds", "2", "--checkpoint-every", "0", "--eval-episodes", "0", "--logger", "none"]
    child = start_cli([*cmd, "--total-frames", "100000000"], preexec_fn=_reset_sigint)
    try:
        deadline = time.monotonic() + 300
        while not sorted(group.glob("*/progress.csv")) or not progress_rows(
            sorted(group.glob("*/progress.csv"))[0].parent
        ):
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the group run ended, or logged nothing, before it was signalled")
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, err
    assert "Traceback" not in err
    assert f"--resume {group}" in out, out
    members = sorted(p.parent for p in group.glob("*/progress.csv"))
    assert len(members) == 2
    iterations = {load_checkpoint(m / "checkpoints" / "last.pt")["iteration"] for m in members}
    # every member stopped after the same iteration, with all its logged rows in its checkpoint
    assert len(iterations) == 1 and iterations == {len(progress_rows(members[0]))}
    done = iterations.pop() + 1
    frames = done * int(TINY[TINY.index("--num-envs") + 1]) * int(TINY[TINY.index("--steps-per-env") + 1])
    resumed = start_cli(["train", "--resume", str(group), "--total-frames", str(frames)])
    _, resumed_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_err[-3000:]
    assert all(len(progress_rows(m)) == done for m in members)
