"""The training application: CLI end to end, exact resume, eval, plot, configs, errors, learning."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from trpo_torchrl.app import checkpoint as ckpt
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import ConfigError, TrainConfig, build_config
from trpo_torchrl.app.envs import env_state, load_env_state, make_env
from trpo_torchrl.collectors import gym_vector_env
from trpo_torchrl.app.normalize import RewardScaler, RunningMoments
from trpo_torchrl.app.train import Trainer, resume_trainer

TINY = ["--num-envs", "2", "--steps-per-env", "64", "--critic-epochs", "2", "--critic-minibatch", "64", "--progress", "false"]


def _train(tmp_path, *extra):
    return main(["train", "--logdir", str(tmp_path), "--run-name", "run", *TINY, *extra])


def test_cli_train_eval_plot_end_to_end(tmp_path, capsys):
    assert _train(tmp_path, "--env", "CartPole-v1", "--total-frames", "512", "--eval-episodes", "3") == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    for name in ("progress.csv", "config.yaml", "curve.png", "checkpoints/final.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
        assert str(run / name) in out or name in ("config.yaml", "checkpoints/last.pt")
    assert "mean_return=" in out
    rows = (run / "progress.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 + 1  # header, 4 iterations of 128 frames, the final evaluation
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", "--checkpoint", str(run), "--episodes", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("mean_return=") and last.endswith("episodes=2")
    assert main(["eval", "--checkpoint", str(run / "checkpoints/final.pt"), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert result["mean_return"] == pytest.approx(float(np.mean(result["returns"])))

    out_png = tmp_path / "plots" / "curves.png"
    assert "for 512 frames (4 iterations of 128)," in out
    assert main(["plot", str(run), "--out", str(out_png)]) == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a folder gets curves.png inside it, a name without a suffix gets .png, and it says which
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'plots' / 'curves.png'}"
    assert main(["plot", str(run), "--out", str(tmp_path / "bare")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'bare.png'}"
    # a column that is not there, or has no value, is an error, not an empty picture
    assert main(["plot", str(run), "--column", "bogus"]) == 2
    assert "has no column 'bogus'" in capsys.readouterr().err
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "progress.csv").write_text("iteration,frames,train_return\n1,128,\n")  # no episode ended yet
    assert main(["plot", str(hand)]) == 2
    assert "no run has a finite value of 'train_return'" in capsys.readouterr().err
    (hand / "progress.csv").write_text("iteration,frames,train_return\n1,128,abc\n")
    assert main(["plot", str(hand)]) == 2
    assert "line 2: train_return='abc'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs mujoco")
def test_a_run_too_short_for_an_episode_still_succeeds_and_says_why_there_is_no_curve(tmp_path, capsys):
    assert _train(tmp_path, "--env", "HalfCheetah-v5", "--total-frames", "100", "--eval-episodes", "0") == 0
    out = capsys.readouterr().out
    assert "for 128 frames (1 iteration of 128); --total-frames 100 rounded up to whole batches," in out
    assert "curve:      not drawn (plot: no run has a finite value of 'train_return' yet" in out
    assert not (tmp_path / "run" / "curve.png").exists()


def test_eval_is_deterministic(tmp_path, capsys):
    assert _train(tmp_path, "--total-frames", "128", "--eval-episodes", "0") == 0
    capsys.readouterr()
    lines = []
    for _ in range(2):
        assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "3", "--seed", "7"]) == 0
        lines.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert lines[0] == lines[1]


def _config(tmp_path, name, total_frames, env="CartPole-v1", **kw):
    base = dict(
        env=env, total_frames=total_frames, num_envs=2, steps_per_env=64, critic_epochs=2,
        critic_minibatch=64, progress=False, eval_episodes=0, logdir=str(tmp_path), run_name=name,
        checkpoint_every=1, logger="none",
    )
    base.update(kw)
    return build_config(base)


def _params(trainer):
    return {**{f"a.{k}": v for k, v in trainer.actor.state_dict().items()},
            **{f"c.{k}": v for k, v in trainer.critic.state_dict().items()}}


@pytest.mark.parametrize(
    "env,kw",
    [
        ("CartPole-v1", {}),  # the default one-process collector, collector="direct"
        ("CartPole-v1", {"collector": "sync"}),  # TorchRL's Collector
        ("Pendulum-v1", {"normalize_observations": True, "normalize_rewards": True}),
        # MuJoCo state, the float32 observation wrapper and the action clip inside each sub-env
        pytest.param("HalfCheetah-v5", {"normalize_observations": True, "normalize_rewards": True},
                     marks=pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs mujoco")),
    ],
)
def test_resume_equals_uninterrupted_run(tmp_path, env, kw):
    full = Trainer(_config(tmp_path, "full", 4 * 128, env=env, **kw))
    full.train()
    part = Trainer(_config(tmp_path, "part", 2 * 128, env=env, **kw))
    part.train()
    resumed = resume_trainer(part.run_dir / "checkpoints" / "last.pt", {"total_frames": 4 * 128})
    assert resumed.iteration == 2
    resumed.train()
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # and the run really moved: parameters differ from a fresh initialisation
    fresh = _params(Trainer(_config(tmp_path, "fresh", 128, env=env, **kw)))
    assert any(not torch.equal(a[k], fresh[k]) for k in a if k.startswith("a."))


def test_resume_from_the_run_directory_writes_into_it(tmp_path):
    first = Trainer(_config(tmp_path / "logs", "r", 128))
    first.train()
    resumed = resume_trainer(first.run_dir, {"total_frames": 256})
    assert resumed.run_dir == first.run_dir.resolve() and resumed.iteration == 1
    resumed.train()
    with open(first.run_dir / "progress.csv") as f:
        assert [row["iteration"] for row in csv.DictReader(f)] == ["1", "2"]
    state = ckpt.load_checkpoint(first.run_dir / "checkpoints" / "final.pt")
    assert state["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing written beside the logdir


def test_a_new_run_refuses_a_run_directory_that_holds_a_run(tmp_path):
    first = Trainer(_config(tmp_path, "same", 128, seed=1))
    first.train()
    before = {p.name: p.read_bytes() for p in (first.run_dir / "progress.csv", first.run_dir / "config.yaml")}
    with pytest.raises(ConfigError, match="already holds a run .*--resume"):
        Trainer(_config(tmp_path, "same", 128, seed=2))
    assert before == {name: (first.run_dir / name).read_bytes() for name in before}
    # the command line says so in one line, without a traceback
    assert main(["train", "--env", "CartPole-v1", "--logdir", str(tmp_path), "--run-name", "same",
                 "--total-frames", "128", "--eval-episodes", "0"]) != 0


def test_resume_refuses_changes_to_the_past(tmp_path):
    t = Trainer(_config(tmp_path, "r", 128))
    t.train()
    with pytest.raises(ValueError, match="cannot change: max_kl"):
        resume_trainer(t.run_dir, {"max_kl": 0.5})


def test_threads_sets_torchs_thread_count(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Trainer(_config(tmp_path, "t1", 128, threads=1)).collector.shutdown()
        assert torch.get_num_threads() == 1
        t = Trainer(_config(tmp_path, "t0", 128))  # 0 (the default) leaves it as it is
        assert torch.get_num_threads() == 1
        t.train()
        resumed = resume_trainer(t.run_dir, {"threads": 2, "total_frames": 256})  # a machine setting
        assert resumed.config.threads == 2 and torch.get_num_threads() == 2
        resumed.collector.shutdown()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads=-1 must be >= 0"):
        _config(tmp_path, "bad", 128, threads=-1)


def test_env_snapshot_restores_the_simulators():
    env = make_env("CartPole-v1", 2, seed=3)
    env.rollout(20, break_when_any_done=False)
    saved = pickle.loads(pickle.dumps(env_state(env)))
    venv = gym_vector_env(env)
    actions = np.array([0, 1])
    first = [venv.step(actions)[0] for _ in range(30)]
    load_env_state(env, saved)
    second = [venv.step(actions)[0] for _ in range(30)]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"config": {}, "actor": {}, "x": 1})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"config": {}, "actor": {}, "x": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a trpo_torchrl checkpoint"):
        ckpt.load_checkpoint(foreign)
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt.save_checkpoint(tmp_path / "bare.pt", {"actor": {}})
    assert main(["eval", "--checkpoint", str(tmp_path / "bare.pt")]) == 2
    assert "lacks config: it is incomplete or was edited" in capsys.readouterr().err


def test_eval_names_what_does_not_fit(tmp_path, capsys):
    assert _train(tmp_path, "--total-frames", "128", "--eval-episodes", "0") == 0
    final = tmp_path / "run" / "checkpoints" / "final.pt"
    state = ckpt.load_checkpoint(final)
    state["config"]["hidden_sizes"] = [8]  # the actor saved no longer fits the model the config builds
    ckpt.save_checkpoint(tmp_path / "edited.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "edited.pt")]) == 2
    assert "its actor does not fit the model its config builds for CartPole-v1" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["eval", "--checkpoint", str(final), "--video", str(tmp_path / "a_file")]) == 2
    assert "--video takes a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--env", "CartPol-v1"], "unknown environment 'CartPol-v1'; did you mean CartPole-v1"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--max-kll", "0.1"], "unrecognized arguments"),
        (["--max-kl", "-1"], "max_kl=-1.0 must be > 0"),
        (["--max-kl", "big"], "max_kl='big' is not a valid float"),
        (["--kl-reduction", "max"], "kl_reduction='max' must be 'sum' or 'mean'"),
        (["--workers", "2"], "needs collector='multisync'"),
        # numbers are taken as written or refused: no truncation, no infinities
        (["--total-frames", "12.5"], "total_frames='12.5' is not a valid int"),
        (["--total-frames", "1e400"], "total_frames='1e400' is not a valid int"),
        (["--damping", "inf"], "damping='inf' is not a valid float"),
        (["--init-log-std", "nan"], "init_log_std='nan' is not a valid float"),
        (["--device", "cuda:abc"], "device='cuda:abc' must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--device", "cpu:7"], "device='cpu:7' must be"),
        (["--env", "FrozenLake-v1"], "'FrozenLake-v1' has observation space Discrete(16) and action space Discrete(4); "
                                     "the training app needs a flat Box observation"),
    ],
)
def test_cli_errors(tmp_path, capsys, args, message):
    try:
        code = _train(tmp_path, "--total-frames", "128", *args)
    except SystemExit as exit_:  # argparse rejects unknown flags itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written: no empty run directory either


def test_config_file_and_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("env: CartPole-v1\nmax_kl: 0.02\ngamma: 0.95\n")
    c = build_config({"gamma": "0.9"}, cfg)
    assert (c.max_kl, c.gamma) == (0.02, 0.9)  # file over preset, command line over file
    assert c.steps_per_env == 512  # from the CartPole-v1 preset (rl-zoo3)
    assert build_config({"env": "HalfCheetah-v5"}).max_kl == 0.04
    assert build_config({"env": "Ant-v5"}).normalize_observations
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_kl: 0.01\nnot_a_key: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'not_a_key'"):
        build_config({}, bad)
    bad.write_text("cg_iters: ten\n")
    with pytest.raises(ConfigError, match="cg_iters='ten' is not a valid int"):
        build_config({}, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config({}, tmp_path / "missing.yaml")
    assert TrainConfig().frames_per_batch == 2048
    assert build_config({"total_frames": "1e6"}).total_frames == 1_000_000  # a whole number, however written
    assert build_config({"total_frames": "2_048"}).total_frames == 2048


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_config_error(tmp_path, capsys):
    assert _train(tmp_path, "--total-frames", "128", "--device", "cuda") == 2
    assert "torch sees 0 CUDA device(s)" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.csv"))


def test_resume_takes_no_config_file_and_needs_a_run_directory(tmp_path, capsys):
    first = Trainer(_config(tmp_path, "r", 128))
    first.train()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_kl: 0.02\n")
    assert main(["train", "--resume", str(first.run_dir), "--config", str(cfg)]) == 2
    assert "--config cannot be combined" in capsys.readouterr().err
    stray = tmp_path / "elsewhere" / "copy.pt"
    stray.parent.mkdir()
    stray.write_bytes((first.run_dir / "checkpoints" / "final.pt").read_bytes())
    with pytest.raises(ConfigError, match="is not in a checkpoints/ folder"):
        resume_trainer(stray, {"total_frames": 256})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "elsewhere", "r"]


def test_running_moments_match_numpy():
    m = RunningMoments((3,), eps=0.0)
    data = torch.randn(1000, 3, dtype=torch.float64) * 3 + 1
    for chunk in data.split(137):
        m.update(chunk)
    np.testing.assert_allclose(m.mean.numpy(), data.mean(0).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.var.numpy(), data.var(0, unbiased=False).numpy(), rtol=1e-10)


def test_reward_scaler_divides_by_the_std_of_the_discounted_return():
    # a plain loop over every environment's discounted return (reset at episode ends), carried
    # across batches, against the scaler; the std is that of every return seen so far
    gamma, n, steps = 0.9, 3, 50
    scaler = RewardScaler(n, gamma)
    gen = torch.Generator().manual_seed(0)
    running, seen = [0.0] * n, []
    for _ in range(2):
        reward = torch.randn(n, steps, 1, generator=gen) * 2
        done = torch.rand(n, steps, 1, generator=gen) < 0.1
        out = scaler(reward, done)
        for i in range(n):
            for t in range(steps):
                running[i] = running[i] * gamma + float(reward[i, t, 0])
                seen.append(running[i])
                if done[i, t, 0]:
                    running[i] = 0.0
        assert scaler.returns.tolist() == running
        # the moments start from mean 0, variance 1 at count 1e-4 (VecNormalize's), merged with the returns
        k, c = len(seen), 1e-4
        var = (c + np.var(seen) * k + np.mean(seen) ** 2 * c * k / (k + c)) / (k + c)
        std = math.sqrt(var + 1e-8)
        torch.testing.assert_close(out, (reward / std).clamp(-10, 10), rtol=1e-6, atol=1e-7)


def test_cartpole_learns(tmp_path):
    """The learning test CI runs: the default preset on CartPole-v1, a fixed seed and frame budget,
    evaluated deterministically on 10 episodes."""
    config = build_config(
        dict(env="CartPole-v1", seed=0, total_frames=int(os.environ.get("TRPO_TEST_FRAMES", 60_000)),
             progress=False, logdir=str(tmp_path), run_name="learn", logger="none", checkpoint_every=0)
    )
    result = Trainer(config).train()
    assert result.eval_mean is not None and result.eval_mean >= 400, result


def test_eval_video(tmp_path, capsys):
    pytest.importorskip("pygame")
    assert _train(tmp_path, "--total-frames", "128", "--eval-episodes", "0") == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "1", "--video", str(tmp_path / "video")]) == 0
    gif = tmp_path / "video" / "episode.gif"
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")


def test_unavailable_logger_is_a_clear_error(tmp_path, capsys):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert _train(tmp_path, "--total-frames", "128", "--logger", "tensorboard") == 2
        assert "pip install 'trpo-torchrl[tensorboard]'" in capsys.readouterr().err
    else:
        pytest.skip("tensorboard is installed")


def test_mujoco_observations_reach_the_networks_as_float32():
    """MuJoCo reports float64 observations; the float32 networks must get float32 (a float64 batch
    stopped HalfCheetah-v5 training at its first policy call)."""
    pytest.importorskip("mujoco")
    env = make_env("HalfCheetah-v5", 2, seed=0)
    td = env.rollout(3, break_when_any_done=False)
    assert td["observation"].dtype == torch.float32
    assert td["next", "observation"].dtype == torch.float32
    env.close()


def test_checkpoint_configs_keep_the_kl_measure_they_were_trained_with():
    from trpo_torchrl.app.config import config_from_dict

    # new runs measure the KL as sb3-contrib does; a checkpoint from before the option existed summed it
    assert TrainConfig().kl_reduction == "mean"
    assert config_from_dict(TrainConfig().to_dict()).kl_reduction == "mean"
    legacy = TrainConfig().to_dict()
    del legacy["kl_reduction"], legacy["critic_eps"]
    assert config_from_dict(legacy).kl_reduction == "sum"
    assert config_from_dict(legacy).critic_eps == 1e-8


@pytest.mark.parametrize("env_id,steps", [("CartPole-v1", 120), ("Pendulum-v1", 230), ("HalfCheetah-v5", 1010)])
def test_episode_ends_carry_the_real_final_observation(env_id, steps):
    # what the simulator returned, recorded under GymWrapper, against what the batch holds: at a
    # done step ("next", "observation") is the episode's real last observation (truncated episodes
    # bootstrap from it) and the following step starts from the reset observation
    if env_id.startswith("HalfCheetah"):
        pytest.importorskip("mujoco")
    env = make_env(env_id, 2, seed=5)
    assert type(env.base_env._info_dict_reader[0]).__name__ == "FinalObservationReader"
    venv = gym_vector_env(env)
    raw = []
    step = venv.step
    # a copy: TorchRL swaps the final observation into the returned array in place
    venv.step = lambda action: raw.append(copy.deepcopy(out := step(action))) or out
    td = env.reset()
    # when every environment ends at once TorchRL resets the vector env itself: its observation
    # is then where the next episode starts
    resets = {}
    reset = venv.reset
    venv.reset = lambda **kw: resets.__setitem__(len(raw) - 1, copy.deepcopy(out := reset(**kw))) or out
    ends = 0
    for t in range(steps):
        td = env.rand_action(td)
        out, td = env.step_and_maybe_reset(td)
        obs, reward, terminated, truncated, info = raw[t]
        for i in range(2):
            done = bool(terminated[i] or truncated[i])
            expected_next = info["final_obs"][i] if done else obs[i]
            torch.testing.assert_close(out["next", "observation"][i], torch.as_tensor(expected_next, dtype=torch.float32))
            start = resets[t][0][i] if t in resets else obs[i]
            torch.testing.assert_close(td["observation"][i], torch.as_tensor(start, dtype=torch.float32))
            assert bool(out["next", "done"][i]) == done
            assert bool(out["next", "truncated"][i]) == bool(truncated[i])
            ends += done
    assert ends > 0
    # the simulator's per-step diagnostics stay out of the batch
    assert set(out["next"].keys()) <= {"observation", "reward", "done", "terminated", "truncated", "episode_reward", "final"}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_advantages_equal_stable_baselines3s_on_the_same_batch(tmp_path, env_id):
    # the app's scaled rewards -> λ-returns pipeline against Stable-Baselines3's RolloutBuffer fed the
    # same rewards, values and episode starts, with its own truncation rule: a truncated episode's
    # last reward gains γ·V(final observation) (Pendulum always truncates, CartPole terminates)
    buffers = pytest.importorskip("stable_baselines3.common.buffers")
    import gymnasium as gym

    config = _config(tmp_path, "sb3", 3 * 256, env=env_id, steps_per_env=256,
                     normalize_observations=True, normalize_rewards=True)
    trainer = Trainer(config)
    trainer.step(trainer.next_batch())  # a critic that has been fitted once, statistics that have moved
    batch = trainer.next_batch()
    trainer.collector.shutdown()
    done = batch["next", "done"]
    batch["next", "reward"] = trainer.reward_scaler(batch["next", "reward"], done)
    with torch.no_grad():
        trainer.loss.value_estimator(batch)
        value = trainer.critic(batch.select("observation").clone())["state_value"].squeeze(-1).numpy()
        next_value = trainer.critic(batch["next"].select("observation").clone())["state_value"].squeeze(-1).numpy()
    envs, steps = value.shape
    reward = batch["next", "reward"].squeeze(-1).numpy()
    truncated = (batch["next", "truncated"] & ~batch["next", "terminated"]).squeeze(-1).numpy()
    done = done.squeeze(-1).numpy()
    assert done.any()  # episodes end inside the batch: the case that matters
    assert truncated.any() == (env_id == "Pendulum-v1")
    rollout = buffers.RolloutBuffer(steps, gym.spaces.Box(-1, 1, (1,)), gym.spaces.Box(-1, 1, (1,)),
                                    gamma=config.gamma, gae_lambda=config.gae_lambda, n_envs=envs)
    rollout.rewards[:] = np.where(truncated, reward + config.gamma * next_value, reward).T
    rollout.values[:] = value.T
    rollout.episode_starts[1:] = done.T[:-1]
    rollout.compute_returns_and_advantage(last_values=torch.as_tensor(next_value[:, -1]), dones=done[:, -1])
    np.testing.assert_allclose(batch["advantage"].squeeze(-1).numpy().T, rollout.advantages, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["value_target"].squeeze(-1).numpy().T, rollout.returns, rtol=1e-5, atol=1e-6)
