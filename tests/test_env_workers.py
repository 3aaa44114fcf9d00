"""``env_workers``: the direct collector's sub-environments stepped in worker processes (gymnasium's
AsyncVectorEnv, forked from the live sub-environments) give the batches of stepping them in this
process, bit for bit; checkpoints read and restore the simulators where they step; a failing worker
is an error that names the environment; no worker process outlives a collector or a run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests._app_runs import app_config, trainer_parameters
from tests._support import needs_mujoco
from trpo_torchrl.app.config import ConfigError, build_config
from trpo_torchrl.app.envs import env_state, make_env
from trpo_torchrl.app.models import build_models
from trpo_torchrl.app.train import Trainer, resume_trainer
from trpo_torchrl.collectors import DirectCollector, EnvWorkersError, PopulationCollector, gym_vector_env

# short episodes, so a few batches hold terminations (CartPole) and truncations (HalfCheetah)
ENVS = [
    ("CartPole-v1", {}),
    pytest.param("HalfCheetah-v5", {"max_episode_steps": 30}, marks=needs_mujoco),
]


def _collector(env_id, env_kwargs, seed, env_workers, steps=40):
    config = build_config({"env": env_id, "logger": "none", "normalize_observations": True, "num_envs": 2})
    env = make_env(env_id, 2, seed, env_kwargs=env_kwargs)
    venv = gym_vector_env(env)
    torch.manual_seed(seed)
    actor, _, normalizer = build_models(config, venv.single_observation_space, venv.single_action_space)
    normalizer.update(torch.randn(64, venv.single_observation_space.shape[0]))
    generator = torch.Generator().manual_seed(100 + seed)
    return DirectCollector(env, actor, frames_per_batch=2 * steps, generator=generator, env_workers=env_workers)


def _assert_same(a, b):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("env_id,env_kwargs", ENVS)
def test_a_collector_with_workers_gives_the_same_batches(env_id, env_kwargs):
    here, there = _collector(env_id, env_kwargs, 0, 0), _collector(env_id, env_kwargs, 0, 2)
    assert here.worker_processes == [] and len(there.worker_processes) == 2
    for _ in range(3):
        a, b = here.rollout(), there.rollout()
        _assert_same(a, b)
    assert bool(a["next", "done"].any()) or bool(b["next", "terminated"].any()) or env_id == "HalfCheetah-v5"
    # the carried step and the simulators (read in the workers) are the same too
    for key, value in here.state_dict().items():
        assert np.array_equal(value, there.state_dict()[key]), key
    sims_here, sims_there = env_state(here.env), env_state(there.env, there.map_envs)
    for x, y in zip(sims_here["envs"], sims_there["envs"]):
        assert x["attributes"][-1].keys() == y["attributes"][-1].keys()
        if x["mujoco"] is not None:
            assert np.array_equal(x["mujoco"], y["mujoco"])
    here.shutdown()
    there.shutdown()
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("env_id,env_kwargs", ENVS)
def test_a_population_with_workers_gives_the_same_batches(env_id, env_kwargs):
    here = PopulationCollector([_collector(env_id, env_kwargs, m, 0) for m in range(2)])
    there = PopulationCollector([_collector(env_id, env_kwargs, m, 1) for m in range(2)])
    done = False
    for _ in range(3):
        for a, b in zip(here.rollout(), there.rollout()):
            _assert_same(a, b)
            done = done or bool(a["next", "done"].any())
    assert done
    for population in (here, there):
        population.shutdown()
        for c in population.collectors:
            c.shutdown()
    assert multiprocessing.active_children() == []


def test_workers_and_threads_are_one_choice():
    env = make_env("CartPole-v1", 2, 0)
    config = build_config({"env": "CartPole-v1", "logger": "none", "num_envs": 2})
    venv = gym_vector_env(env)
    actor, _, _ = build_models(config, venv.single_observation_space, venv.single_action_space)
    with pytest.raises(ValueError, match="choose one"):
        DirectCollector(env, actor, frames_per_batch=4, env_workers=1, env_threads=2)
    with pytest.raises(ValueError, match="env_workers must be an int >= 0"):
        DirectCollector(env, actor, frames_per_batch=4, env_workers=-1)
    with pytest.raises(ConfigError, match="choose one"):
        build_config({"env": "CartPole-v1", "env_workers": 2, "env_threads": 2})
    with pytest.raises(ConfigError, match="needs collector='direct'"):
        build_config({"env": "CartPole-v1", "env_workers": 2, "collector": "sync"})
    assert multiprocessing.active_children() == []  # refused before any worker started


class _FailingEnv(gym.Env):
    """CartPole-sized; its fifth step raises (``mode="raise"``) or ends its process (``"exit"``)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, mode="raise"):
        self.mode = mode
        self.steps = 0
        self.lock = threading.Lock()  # not picklable: the workers never pickle the environment

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps == 5 and os.getpid() != self.creator:
            if self.mode == "exit":
                os._exit(3)
            raise RuntimeError("the simulator broke")
        return np.zeros(4, np.float32), 1.0, False, False, {}


gym.register("TrpoTestFailing-v0", entry_point=_FailingEnv)


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_a_failing_worker_is_an_error_that_names_the_env(mode):
    _FailingEnv.creator = os.getpid()
    env = make_env("TrpoTestFailing-v0", 2, 0, env_kwargs={"mode": mode})
    venv = gym_vector_env(env)
    config = build_config({"env": "CartPole-v1", "logger": "none", "num_envs": 2})
    actor, _, _ = build_models(config, venv.single_observation_space, venv.single_action_space)
    collector = DirectCollector(env, actor, frames_per_batch=16, env_workers=1)
    with pytest.raises(EnvWorkersError, match="TrpoTestFailing-v0") as failure:
        collector.rollout()
    assert "worker" in str(failure.value)
    assert multiprocessing.active_children() == []  # the other worker was stopped too
    with pytest.raises(EnvWorkersError, match="TrpoTestFailing-v0"):  # and the collector says so after
        collector.map_envs(len)
    collector.shutdown()


def test_resume_with_workers_continues_a_run_stepped_here(tmp_path):
    # the checkpoint's simulators are read in this process and restored into the workers (and the
    # other way round): the three runs are the same run
    full = Trainer(app_config(tmp_path, "full", 4 * 128))
    full.train()
    part = Trainer(app_config(tmp_path, "part", 2 * 128, env_workers=1))
    part.train()
    assert multiprocessing.active_children() == []
    resumed = resume_trainer(part.run_dir / "checkpoints" / "last.pt", {"total_frames": 4 * 128, "env_workers": 0})
    resumed.train()
    part2 = Trainer(app_config(tmp_path, "part2", 2 * 128))
    part2.train()
    resumed2 = resume_trainer(part2.run_dir, {"total_frames": 4 * 128, "env_workers": 2})
    resumed2.train()
    a = trainer_parameters(full)
    for other in (resumed, resumed2):
        b = trainer_parameters(other)
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert multiprocessing.active_children() == []


def test_sigterm_stops_a_run_with_workers_at_a_boundary_and_the_workers_end(tmp_path, monkeypatch):
    trainer = Trainer(app_config(tmp_path, "run", 100 * 128, checkpoint_every=0, env_workers=1))
    calls, next_batch = [0], Trainer.next_batch

    def signalled(self):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return next_batch(self)

    monkeypatch.setattr(Trainer, "next_batch", signalled)
    result = trainer.train()
    assert result.interrupted and result.exit_status == 143 and result.iterations == 2
    assert result.checkpoint.is_file()
    assert multiprocessing.active_children() == []


def test_ctrl_c_while_the_workers_step_stops_them_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    from trpo_torchrl import collectors

    trainer = Trainer(app_config(tmp_path, "run", 100 * 128, env_workers=1))
    calls, step_wait = [0], collectors._EnvWorkers.step_wait

    def interrupted(self, rollout, t):
        calls[0] += 1
        if calls[0] == 64 + 10:  # the second batch's eleventh step
            raise KeyboardInterrupt
        return step_wait(self, rollout, t)

    monkeypatch.setattr(collectors._EnvWorkers, "step_wait", interrupted)
    result = trainer.train()
    assert result.interrupted and result.iterations == 1
    assert "no checkpoint of this iteration" in capsys.readouterr().err
    assert multiprocessing.active_children() == []
    # the periodic checkpoint of iteration 1 is there and resumes
    resumed = resume_trainer(trainer.run_dir, {"total_frames": 2 * 128})
    assert resumed.iteration == 1
    resumed.shutdown()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_stops_a_group_run_with_workers_and_leaves_no_process(tmp_path):
    """A terminal's Ctrl-C reaches the workers too: they ignore it, the run stops at the iteration
    boundary with its checkpoints (exit 130), and no process of the run's group is left."""
    import time

    from tests._app_runs import TINY, start_cli

    cmd = ["train", "--logdir", str(tmp_path), "--run-name", "g", *TINY]
    cmd += ["--seeds", "2", "--env-workers", "2", "--eval-episodes", "0", "--logger", "none"]

    def own_group_with_sigint():  # its own process group (as a terminal's job), Ctrl-C not ignored
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    child = start_cli([*cmd, "--total-frames", "100000000"], preexec_fn=own_group_with_sigint)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "g").glob("*/checkpoints/last.pt")):
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the group run ended, or wrote no checkpoint, before it was signalled")
            time.sleep(0.2)
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=120)
        deadline = time.monotonic() + 10
        while _group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _group_alive(child.pid)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"--resume {tmp_path / 'g'}" in out, out
    assert not left, "a process of the run's group outlived it"
