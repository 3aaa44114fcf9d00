"""``train --seeds M`` with the members in several processes (``--member-processes``): the same
members bit for bit as one process, one stop iteration for every slice whoever got the signal, a
group that resumes in any number of processes, and a failing slice that stops the others."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests._app_runs import TINY, progress_rows, start_cli
from trpo_torchrl.app import member_processes as mp_module
from trpo_torchrl.app.checkpoint import load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import ConfigError, build_config
from trpo_torchrl.app.member_processes import MemberProcessError, member_slices, resolve_member_processes
from trpo_torchrl.app.population import PopulationTrainer

FRAMES = 128  # one iteration of TINY


def _argv(tmp_path, name, iterations, *extra):
    return [
        "train",
        "--logdir",
        str(tmp_path),
        "--run-name",
        name,
        "--env",
        "CartPole-v1",
        *TINY,
        "--total-frames",
        str(iterations * FRAMES),
        "--seeds",
        "4",
        "--eval-episodes",
        "0",
        "--logger",
        "none",
        "--normalize-observations",
        "true",
        *extra,
    ]


def _states(group: Path, name: str = "final.pt") -> list[dict]:
    return [load_checkpoint(group / f"CartPole-v1__seed{s}" / "checkpoints" / name) for s in range(4)]


def _assert_same_members(a: list[dict], b: list[dict]) -> None:
    for m, (x, y) in enumerate(zip(a, b)):
        assert x["iteration"] == y["iteration"], m
        for part in ("actor", "critic"):
            for key in x[part]:
                assert torch.equal(x[part][key], y[part][key]), (m, part, key)
        for k, v in x["critic_optimizer"]["state"].items():
            assert torch.equal(v["exp_avg_sq"], y["critic_optimizer"]["state"][k]["exp_avg_sq"]), (m, k)


def test_slices_and_how_many_processes(monkeypatch):
    assert member_slices(5, 2) == [range(0, 2), range(2, 5)]
    assert member_slices(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]

    def config(**kw):
        return build_config({"env": "CartPole-v1", "logger": "none", **kw})

    monkeypatch.setattr(mp_module, "_cores", lambda: 16)
    assert resolve_member_processes(config(seeds=1)) == 1
    assert resolve_member_processes(config(seeds=3)) == 1  # every slice holds two members or more
    assert resolve_member_processes(config(seeds=8)) == 4
    assert resolve_member_processes(config(seeds=64)) == 16
    assert resolve_member_processes(config(seeds=8, member_processes=1)) == 1
    assert resolve_member_processes(config(seeds=8, member_processes=3)) == 3
    assert resolve_member_processes(config(seeds=8, collector="sync")) == 1
    assert resolve_member_processes(config(seeds=8, env_workers=2)) == 1
    monkeypatch.setattr(mp_module, "_cores", lambda: 2)
    assert resolve_member_processes(config(seeds=8)) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun each rank keeps its members
    assert resolve_member_processes(config(seeds=8)) == 1
    with pytest.raises(ConfigError, match="under torchrun"):
        resolve_member_processes(config(seeds=8, member_processes=2))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(seeds=3, member_processes=2), "at least two members per process"),
        (dict(seeds=8, member_processes=2, device="cuda"), "on a GPU"),
        (dict(seeds=8, member_processes=2, collector="ray"), "Ray"),
        (dict(seeds=8, member_processes=-1), "must be >= 0"),
    ],
)
def test_settings_that_cannot_split_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"env": "CartPole-v1", **kw})


@pytest.mark.slow
def test_two_processes_train_the_members_of_one_process_bit_for_bit(tmp_path, capsys):
    assert main(_argv(tmp_path, "one", 3, "--member-processes", "1", "--progress", "true")) == 0
    one_out = capsys.readouterr().out
    assert main(_argv(tmp_path, "two", 3, "--member-processes", "2", "--progress", "true")) == 0
    two_out = capsys.readouterr().out
    assert "in 2 processes (seeds 0-1, 2-3)" in two_out
    _assert_same_members(_states(tmp_path / "one"), _states(tmp_path / "two"))
    # the parent prints the population's progress lines, the same ones, and every member's result
    lines = [[line for line in out.splitlines() if line.startswith("iteration ")] for out in (one_out, two_out)]
    assert len(lines[0]) == 3 and lines[0] == lines[1]
    for s in range(4):
        assert str(tmp_path / "two" / f"CartPole-v1__seed{s}" / "checkpoints" / "final.pt") in two_out
    assert (tmp_path / "two" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert build_config({}, tmp_path / "two" / "config.yaml").seeds == 4  # the group's file, not a slice's


@pytest.mark.slow
def test_an_interrupted_group_resumes_exactly_in_another_number_of_processes(tmp_path, monkeypatch, capsys):
    assert main(_argv(tmp_path, "full", 4, "--member-processes", "1")) == 0
    next_batches = PopulationTrainer.next_batches

    def interrupted(self):  # Ctrl-C while the third iteration collects, in every slice
        if self.members[0].iteration == 2:
            raise KeyboardInterrupt
        return next_batches(self)

    monkeypatch.setattr(PopulationTrainer, "next_batches", interrupted)
    assert main(_argv(tmp_path, "part", 4, "--member-processes", "2")) == 130
    monkeypatch.setattr(PopulationTrainer, "next_batches", next_batches)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "part"), "--member-processes", "1"]) == 0
    assert "at iteration 2" in capsys.readouterr().out
    _assert_same_members(_states(tmp_path / "full"), _states(tmp_path / "part"))


def _raise(self):
    raise RuntimeError("the simulator broke")


def _killed(self):  # what the out-of-memory killer does
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "end,match",
    [
        (_raise, r"seeds 2\.\.3 failed(.|\n)*the simulator broke"),
        (_killed, r"seeds 2\.\.3 was killed by SIGKILL(.|\n)*own"),
    ],
    ids=["raises", "killed"],
)
def test_a_slice_that_fails_stops_the_others_at_their_next_boundary(tmp_path, monkeypatch, end, match):
    next_batches = PopulationTrainer.next_batches

    def failing(self):  # the slice of seeds 2-3 ends while its third iteration collects
        if self.members[0].config.seed == 2 and self.members[0].iteration == 2:
            end(self)
        return next_batches(self)

    monkeypatch.setattr(PopulationTrainer, "next_batches", failing)
    with pytest.raises(MemberProcessError, match=match):
        main(_argv(tmp_path, "g", 50, "--member-processes", "2", "--checkpoint-every", "0"))
    # the other slice went on to the next boundary and stopped there with its checkpoints
    stopped = [load_checkpoint(tmp_path / "g" / f"CartPole-v1__seed{s}" / "checkpoints" / "last.pt") for s in (0, 1)]
    assert [s["iteration"] for s in stopped] == [3, 3]


def test_a_slices_app_error_is_one_line(tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):
        raise ConfigError("config: this environment cannot be made here")

    monkeypatch.setattr(PopulationTrainer, "__init__", refuse)
    assert main(_argv(tmp_path, "g", 2, "--member-processes", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "trpo-torchrl train: error: config: this environment cannot be made here"


def _start_group(tmp_path, *extra):
    # its own session: a signal for "the terminal's process group" reaches the group run and no one else
    return start_cli(_argv(tmp_path, "g", 100_000, "--checkpoint-every", "0", *extra), start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["sigterm-to-the-parent", "ctrl-c-to-the-process-group"])
def test_a_signal_stops_every_slice_after_the_same_iteration(tmp_path, to_group):
    child = _start_group(tmp_path, "--member-processes", "2")
    group = tmp_path / "g"
    try:
        deadline = time.monotonic() + 300
        while min((len(progress_rows(group / f"CartPole-v1__seed{s}")) for s in range(4)), default=0) < 2:
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the group run ended, or logged too little, before it was signalled:\n{child.stderr.read()}"
                )
            time.sleep(0.2)
        if to_group:
            os.killpg(child.pid, signal.SIGINT)  # what a Ctrl-C in its terminal sends: parent and slices
        else:
            child.send_signal(signal.SIGTERM)  # a scheduler stopping the job it started
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == (130 if to_group else 143), err[-3000:]
    assert "Traceback" not in err
    assert f"--resume {group}" in out
    states = _states(group, "last.pt")
    iterations = {s["iteration"] for s in states}
    # every member stopped after the same iteration, with every row it logged in its checkpoint
    assert len(iterations) == 1 and iterations == {len(progress_rows(group / "CartPole-v1__seed3"))}


@pytest.mark.slow
def test_sigterm_to_every_process_while_the_slices_are_built_stops_the_group_cleanly(tmp_path):
    # the slices are built after the parent prints its first line: a signal to every process then
    # reaches slices that have no training handlers yet (a scheduler stopping the whole job)
    child = _start_group(tmp_path, "--member-processes", "2")
    try:
        assert child.stdout.readline().startswith("training ")
        deadline = time.monotonic() + 60
        while len(subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()) < 2:
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.005)
        os.killpg(child.pid, signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert {s["iteration"] for s in _states(tmp_path / "g", "last.pt")} == {0}


@pytest.mark.slow
def test_a_group_resumed_in_processes_takes_the_overrides(tmp_path, capsys):
    assert main(_argv(tmp_path, "g", 1, "--member-processes", "2", "--progress", "true")) == 0
    capsys.readouterr()
    assert (
        main(["train", "--resume", str(tmp_path / "g"), "--total-frames", str(2 * FRAMES), "--progress", "false"]) == 0
    )
    assert "iteration 2/2" not in capsys.readouterr().out  # no progress lines, as asked
    group = build_config({}, tmp_path / "g" / "config.yaml")
    assert (group.total_frames, group.progress) == (2 * FRAMES, False)
