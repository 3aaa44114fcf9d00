"""Atari (ale-py) and MiniGrid in the training app: the standard Atari preprocessing checked against
the emulator itself (frame skip, max-pooling, 84×84 grayscale, no-op resets), life-loss episodes and
clipped rewards for training only with the raw game score reported, the simulator state a
checkpoint restores, and MiniGrid's Dict observation."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.vector import AutoresetMode

needs_atari = pytest.mark.skipif(
    importlib.util.find_spec("ale_py") is None or importlib.util.find_spec("cv2") is None,
    reason="needs ale-py and opencv (pip install 'trpo-torchrl[atari]')",
)
needs_minigrid = pytest.mark.skipif(
    importlib.util.find_spec("minigrid") is None, reason="needs minigrid (pip install 'trpo-torchrl[minigrid]')"
)


class RawSteps(gym.Wrapper):
    """Records what the wrapper below it returns at each step: reward, real game end, lives."""

    def __init__(self, env):
        super().__init__(env)
        self.rewards, self.game_ends, self.actions = [], [], []

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.rewards.append(float(reward))
        self.game_ends.append(bool(terminated or truncated))
        self.actions.append(int(action))
        return obs, reward, terminated, truncated, info


def _chain(env_id, training, *, below_preprocessing=None, above_preprocessing=None, seed=0, **make_kwargs):
    """A sub-environment with the app's wrappers (app/games.py), optionally with a recorder placed
    right below or above AtariPreprocessing."""
    from trpo_torchrl.app.games import game_make_kwargs

    kwargs = game_make_kwargs(env_id, make_kwargs, training=training)
    wrappers = kwargs.pop("wrappers")
    env = gym.make(env_id, **kwargs)
    for wrap in wrappers:
        wrapped = wrap(env)
        if isinstance(wrapped, gym.wrappers.AtariPreprocessing):
            if below_preprocessing is not None:
                wrapped = wrap(below_preprocessing(env))
            if above_preprocessing is not None:
                wrapped = above_preprocessing(wrapped)
        env = wrapped
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def _find(env, kind):
    from trpo_torchrl.app.atari import _find

    return _find(env, kind)


def _area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Downsizing by pixel-area averaging (what cv2.INTER_AREA does), in float64."""

    def weights(n_in):
        scale = n_in / size
        w = np.zeros((size, n_in))
        for i in range(size):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
                w[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
        return w

    return weights(image.shape[0]) @ image.astype(np.float64) @ weights(image.shape[1]).T


@needs_atari
@pytest.mark.parametrize("training", [True, False])
def test_observations_are_four_stacked_84x84_grayscale_frames(training):
    from trpo_torchrl.app.atari import atari_make_kwargs
    from trpo_torchrl.app.games import game_make_kwargs

    kwargs = game_make_kwargs("ALE/Pong-v5", {}, training=training)
    assert kwargs["frameskip"] == 1  # AtariPreprocessing skips the frames; v5 would skip 4 more itself
    env = _chain("ALE/Pong-v5", training)
    assert env.unwrapped._frameskip == 1
    # v5's sticky actions, kept: in a wrapper (whose state a checkpoint holds), not in the emulator
    assert env.spec.kwargs["repeat_action_probability"] == 0.0
    assert _find(env, gym.wrappers.StickyAction).repeat_action_probability == 0.25
    assert atari_make_kwargs("ALE/Pong-v5", {"repeat_action_probability": 0.1})[1] == 0.1
    assert atari_make_kwargs("PongNoFrameskip-v4", {})[1] == 0.0
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    env.close()


@needs_atari
def test_a_step_is_four_emulator_frames_max_pooled_over_the_last_two():
    """The emulator replayed from the state before a step: the observation's newest frame is the
    84×84 area-resize of the pixelwise max of the 3rd and 4th grayscale frames, the reward is the sum
    of the four frames' rewards, and the older stacked frames are the previous steps' frames."""
    # no sticky actions here, so that the emulator's replay of a step is the step
    env = _chain("ALE/Breakout-v5", training=False, seed=3, repeat_action_probability=0.0)
    ale = env.unwrapped.ale
    checked = 0
    previous = None
    for t in range(60):
        action = 1 if t % 10 == 0 else int(env.action_space.sample())  # FIRE now and then: the ball moves
        before = ale.cloneState(include_rng=True)
        obs, reward, *_ = env.step(action)
        after = ale.cloneState(include_rng=True)
        ale.restoreState(before)
        frames, raw_reward, lives = [], 0.0, ale.lives()
        for _ in range(4):
            raw_reward += ale.act(env.unwrapped._action_set[action])
            frames.append(ale.getScreenGrayscale().copy())
        if 0 < ale.lives() < lives:  # FireReset: a lost life's step goes on with a FIRE step
            frames = []
            for _ in range(4):
                raw_reward += ale.act(env.unwrapped._action_set[1])
                frames.append(ale.getScreenGrayscale().copy())
        assert after.serialize() == ale.cloneState(include_rng=True).serialize()  # the replay is the step
        pooled = np.maximum(frames[2], frames[3])
        np.testing.assert_allclose(obs[-1], _area_resize(pooled, 84), atol=1.0)
        assert reward == raw_reward
        if previous is not None:
            np.testing.assert_array_equal(obs[:-1], previous[1:])
        previous = obs
        last_only = _area_resize(frames[3], 84)
        checked += int(np.abs(obs[-1] - last_only).max() > 1.0)  # the max really mattered at this step
    assert checked > 0
    env.close()


@needs_atari
def test_noop_reset_takes_1_to_30_noops():
    counts = []
    for seed in range(12):
        recorder = []
        env = _chain(
            "ALE/Pong-v5",
            training=False,
            below_preprocessing=lambda e: recorder.append(RawSteps(e)) or recorder[-1],
            seed=seed,
        )
        raw = recorder[0]
        # the no-ops, then FireReset's FIRE and action 2 (Pong waits for FIRE), 4 frames each
        noops = len(raw.actions) - 8
        assert raw.actions == [0] * noops + [1] * 4 + [2] * 4
        counts.append(noops)
        env.close()
    assert all(1 <= c <= 30 for c in counts)
    assert len(set(counts)) > 1  # drawn, not fixed


@needs_atari
def test_training_clips_rewards_and_reports_the_raw_game_score():
    """SpaceInvaders scores 5 to 30 per invader: at each step the learner sees the sign of the
    step's raw reward, and the score the app reports is each whole game's raw sum."""
    from trpo_torchrl.app.atari import GameScore

    recorder = []
    env = _chain(
        "ALE/SpaceInvaders-v5",
        training=True,
        above_preprocessing=lambda e: recorder.append(RawSteps(e)) or recorder[-1],
    )
    raw, score = recorder[0], _find(env, GameScore)
    lost_lives = 0
    for _ in range(20_000):
        before, lives = len(raw.rewards), env.unwrapped.ale.lives()
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        # one raw (frame-skipped) step per agent step; FireReset's FIRE after a lost life is a second
        fired = 0 < env.unwrapped.ale.lives() < lives
        assert len(raw.rewards) == before + 1 + fired
        assert reward == np.sign(sum(raw.rewards[before:]))
        if terminated or truncated:
            lost_lives += not raw.game_ends[-1]
            if len(score.finished) == 2:
                break
            env.reset()  # after a lost life: one no-op raw step the learner does not see
    raw_rewards = np.array(raw.rewards)
    assert raw_rewards.max() > 1  # the game's rewards are not {-1, 0, 1}
    assert lost_lives > 0
    ends = np.flatnonzero(raw.game_ends)
    assert len(ends) == 2
    games = np.split(raw_rewards, ends + 1)[:2]
    assert score.finished == [float(g.sum()) for g in games]
    env.close()


@needs_atari
def test_a_lost_life_ends_a_training_episode_but_not_the_game():
    """Breakout has 5 lives: training sees 5 episodes per game (the game continuing after each
    lost life), evaluation one episode per game, ending only at game over."""
    from trpo_torchrl.app.atari import GameScore

    train = _chain("ALE/Breakout-v5", training=True, seed=1)
    lives = [train.unwrapped.ale.lives()]
    episodes = 0
    while not _find(train, GameScore).finished:
        _, _, terminated, truncated, _ = train.step(train.action_space.sample())
        if terminated or truncated:
            episodes += 1
            train.reset()
            lives.append(train.unwrapped.ale.lives())
    assert episodes == 5
    assert lives == [5, 4, 3, 2, 1, 5]  # the game went on after each lost life, then restarted

    evaluation = _chain("ALE/Breakout-v5", training=False, seed=1)
    assert _find(evaluation, GameScore) is None  # evaluation rewards are the game's own
    seen_lives = set()
    for _ in range(20_000):
        _, _, terminated, truncated, _ = evaluation.step(evaluation.action_space.sample())
        seen_lives.add(evaluation.unwrapped.ale.lives())
        if terminated or truncated:
            break
    assert terminated and evaluation.unwrapped.ale.lives() == 0
    assert {1, 2, 3, 4} <= seen_lives  # lives were lost along the way without an episode end
    train.close()
    evaluation.close()


@needs_atari
@pytest.mark.parametrize("training", [True, False])
def test_breakout_starts_every_life_with_fire(training):
    """Breakout waits for FIRE to serve: FireReset serves after each reset and each lost life, so a
    policy that only ever stands still still loses its five lives and the game ends (without it,
    the ball would never come into play and the game would run to its time limit)."""
    from trpo_torchrl.app.atari import FireReset, needs_fire

    env = _chain("ALE/Breakout-v5", training, seed=1)
    assert _find(env, FireReset).active
    game_over, steps, lives_seen = False, 0, set()
    while not game_over and steps < 5_000:
        _, _, terminated, truncated, _ = env.step(0)  # NOOP only
        steps += 1
        lives_seen.add(env.unwrapped.ale.lives())
        game_over = env.unwrapped.ale.game_over()
        if (terminated or truncated) and not game_over:
            env.reset()  # training: a lost life ends the episode, the reset continues the game
    assert game_over and lives_seen >= {1, 2, 3, 4} and steps < 5_000
    env.close()
    freeway = gym.make("ALE/Freeway-v5")
    assert needs_fire(gym.make("ALE/Pong-v5")) and not needs_fire(freeway)
    assert not FireReset(freeway).active


def _vector_env(env_id, num_envs, seed, training=True, policy="auto", **make_kwargs):
    from trpo_torchrl.app.games import game_make_kwargs

    venv = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **game_make_kwargs(env_id, make_kwargs, training=training, policy=policy),
    )
    venv.reset(seed=seed)
    venv.action_space.seed(seed)
    return venv


@needs_atari
def test_the_app_reads_whole_games_scores_from_the_vector_env():
    from trpo_torchrl.app.atari import GameScore, drain_game_scores, game_score_reader

    assert game_score_reader("CartPole-v1", "direct") is None
    assert game_score_reader("ALE/Pong-v5", "direct") is drain_game_scores
    with pytest.warns(UserWarning, match="clipped rewards over one life"):
        assert game_score_reader("ALE/Pong-v5", "multisync") is None
    venv = _vector_env("ALE/Breakout-v5", 2, seed=0)
    for i, sub in enumerate(venv.envs):
        _find(sub, GameScore).finished += [3.0 + i, 7.0]
    assert sorted(drain_game_scores(venv)) == [3.0, 4.0, 7.0, 7.0]
    assert drain_game_scores(venv) == []  # emptied
    venv.close()


def _same(a, b) -> bool:
    """Nested containers of tensors and plain values, equal item by item."""
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@needs_atari
def test_a_restored_simulator_state_continues_the_same_games():
    """env_state / load_env_state (the checkpoint's simulators) on Atari: a fresh env loaded with the
    snapshot returns the same observations, rewards, episode ends and game scores as the original,
    sticky actions included (the ALE's own state does not hold the previous action they repeat)."""
    from torchrl.envs import GymWrapper

    from trpo_torchrl.app.atari import GameScore, drain_game_scores
    from trpo_torchrl.app.checkpoint import decode_state, encode_state
    from trpo_torchrl.app.envs import env_state, load_env_state

    def make(seed):
        return GymWrapper(_vector_env("ALE/Breakout-v5", 2, seed=seed))

    original = make(0)
    venv = original._env
    rng = np.random.default_rng(0)
    for _ in range(150):
        venv.step(rng.integers(0, 4, size=2))
    venv.step(np.array([2, 2]))  # RIGHT, then LEFT first after the snapshot: a sticky repeat of the
    drain_game_scores(venv)  # previous action shows (as the app does after each batch: drained)
    snapshot = decode_state(encode_state(env_state(original)))  # through a checkpoint's encoding
    actions = rng.integers(0, 4, size=(400, 2))
    actions[:3] = 3

    def play(v):
        out = []
        for a in actions:
            obs, reward, terminated, truncated, _ = v.step(a)
            ram = np.stack([s.unwrapped.ale.getRAM() for s in v.envs])  # the emulators' memory
            out.append((obs.copy(), reward.copy(), terminated.copy(), truncated.copy(), ram))
        return out, [list(_find(s, GameScore).finished) for s in v.envs], [_find(s, GameScore).score for s in v.envs]

    expected = play(venv)
    restored = make(123)  # other seeds: everything must come from the snapshot
    load_env_state(restored, snapshot)
    # everything the snapshot holds came back (the sticky action's previous action among it)
    assert _same(encode_state(env_state(restored)), encode_state(snapshot))
    got = play(restored._env)
    for (o1, r1, te1, tr1, m1), (o2, r2, te2, tr2, m2) in zip(expected[0], got[0]):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(te1, te2)
        np.testing.assert_array_equal(tr1, tr2)
    assert expected[1:] == got[1:]
    for a, b in zip(venv.envs, restored._env.envs):  # and the emulators end in the same state
        assert (
            a.unwrapped.ale.cloneState(include_rng=True).serialize()
            == b.unwrapped.ale.cloneState(include_rng=True).serialize()
        )
    assert any(te.any() for _, _, te, _, _ in expected[0])  # the compared stretch holds lost lives
    original.close()
    restored.close()


def test_a_missing_package_is_named_with_its_extra(monkeypatch):
    from trpo_torchrl.app.envs import EnvError, make_vector_env

    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py raises ImportError
    with pytest.raises(EnvError, match=r"ALE/Pong-v5.*needs ale-py.*trpo-torchrl\[atari\]"):
        make_vector_env("ALE/Pong-v5", 1, seed=0)
    monkeypatch.setitem(sys.modules, "minigrid", None)
    with pytest.raises(EnvError, match=r"MiniGrid-Empty-5x5-v0.*needs minigrid.*trpo-torchrl\[minigrid\]"):
        make_vector_env("MiniGrid-Empty-5x5-v0", 1, seed=0)


@needs_minigrid
@pytest.mark.parametrize("training", [True, False])
def test_minigrid_cnn_keeps_the_dict_observation_without_the_mission(training):
    from trpo_torchrl.app.minigrid import make_minigrid_env

    venv = _vector_env("MiniGrid-Empty-5x5-v0", 2, seed=0, training=training, policy="cnn")
    space = venv.single_observation_space
    assert isinstance(space, gym.spaces.Dict) and sorted(space.spaces) == ["direction", "image"]
    assert space["image"] == gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)
    assert space["direction"] == gym.spaces.Discrete(4)
    obs, *_ = venv.step(venv.action_space.sample())
    assert obs["image"].shape == (2, 7, 7, 3) and obs["image"].dtype == np.uint8
    # the same observation as the task itself gives, less the mission
    env = make_minigrid_env("MiniGrid-Empty-5x5-v0", policy="cnn")
    plain = gym.make("MiniGrid-Empty-5x5-v0")
    a, _ = env.reset(seed=4)
    b, _ = plain.reset(seed=4)
    assert sorted(a) == ["direction", "image"] and "mission" in b
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["direction"] == b["direction"]
    venv.close()


@needs_minigrid
@pytest.mark.parametrize("policy", ["auto", "mlp", "lstm"])
def test_minigrid_is_a_flat_vector_of_the_grid_and_the_direction(policy):
    """Every policy but cnn reads MiniGrid as rl-zoo3 does: the symbolic grid flattened (object,
    colour, state per cell), then the one-hot direction, as float32."""
    from trpo_torchrl.app.minigrid import make_minigrid_env

    venv = _vector_env("MiniGrid-DoorKey-5x5-v0", 2, seed=0, training=True, policy=policy)
    assert venv.single_observation_space.shape == (7 * 7 * 3 + 4,)
    assert venv.single_observation_space.dtype == np.float32
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", policy=policy)
    plain = gym.make("MiniGrid-DoorKey-5x5-v0")
    for seed in (1, 2):
        a, _ = env.reset(seed=seed)
        b, _ = plain.reset(seed=seed)
        for action in (0, 0, 2, 1, 2):
            np.testing.assert_array_equal(a[:147], b["image"].reshape(-1).astype(np.float32))
            direction = np.zeros(4, np.float32)
            direction[b["direction"]] = 1.0
            np.testing.assert_array_equal(a[147:], direction)
            a, *_ = env.step(action)
            b, *_ = plain.step(action)
    venv.close()


def test_flat_minigrid_refuses_another_observation():
    from trpo_torchrl.app.minigrid import FlatMiniGrid
    from trpo_torchrl.app.spaces import SpaceError

    with pytest.raises(SpaceError, match="FlatMiniGrid needs MiniGrid's Dict of 'image' and 'direction'"):
        FlatMiniGrid(gym.make("CartPole-v1"))


@needs_minigrid
@pytest.mark.slow
def test_train_and_evaluate_minigrid_from_the_command_line(tmp_path, capsys):
    """A MiniGrid task trains on the flat observation with the direct collector; eval rebuilds it."""
    from trpo_torchrl.app.cli import main

    run = tmp_path / "grid"
    args = ["--env", "MiniGrid-Empty-5x5-v0", "--total-frames", "2048", "--logdir", str(tmp_path)]
    assert main(["train", *args, "--run-name", "grid", "--eval-episodes", "2", "--progress", "false"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["collector"], config["policy"], config["normalize_observations"]) == ("direct", "auto", True)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "final.pt"), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["mean_return"] <= 1.0


@needs_atari
@pytest.mark.slow
def test_train_resume_and_evaluate_pong_from_the_command_line(tmp_path, capsys):
    """`train --env ALE/Pong-v5 --policy cnn` for two tiny iterations, resumed for a third, then
    `eval`: the run's return column holds whole games' scores (Pong: -21..21) and eval full games."""
    from tests._app_runs import train_tiny
    from trpo_torchrl.app.cli import main

    common = ["--env", "ALE/Pong-v5", "--policy", "cnn", "--eval-episodes", "1", "--checkpoint-every", "1"]
    assert train_tiny(tmp_path, *common, "--total-frames", "256") == 0
    run = tmp_path / "run"
    assert main(["train", "--resume", str(run), "--total-frames", "384", "--progress", "false"]) == 0
    with open(run / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    iterations = [r for r in rows if r["fps"]]
    assert [int(r["iteration"]) for r in iterations] == [1, 2, 3]
    for r in iterations:  # whole Pong games' scores, or none finished yet
        assert r["train_return"] == "nan" or float(r["train_return"]) >= -21
    evaluations = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    assert len(evaluations) == 2 and all(-21 <= e <= 21 and e.is_integer() for e in evaluations)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--episodes", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert -21 <= result["mean_return"] <= 21 and float(result["mean_return"]).is_integer()


def test_every_ale_game_gets_the_atari_preset():
    """rl-zoo3's PPO Atari settings (its TRPO file has none): 8 environments × 128 steps, critic
    minibatch 256 × 4 epochs at 2.5e-4; MiniGrid's mirror its DoorKey-5x5 entry."""
    from trpo_torchrl.app.config import build_config

    for env in ("ALE/Pong-v5", "ALE/Breakout-v5"):
        c = build_config({"env": env})
        assert (c.num_envs, c.steps_per_env, c.critic_minibatch, c.critic_epochs) == (8, 128, 256, 4)
        assert (c.critic_lr, c.gamma, c.gae_lambda, c.total_frames) == (2.5e-4, 0.99, 0.95, 10_000_000)
    assert build_config({"env": "ALE/Pong-v5", "num_envs": 4}).num_envs == 4  # flags still win
    assert build_config({"env": "CartPole-v1", "preset": "atari"}).steps_per_env == 128
    c = build_config({"env": "MiniGrid-DoorKey-5x5-v0"})
    assert (c.num_envs, c.steps_per_env, c.critic_minibatch, c.total_frames) == (8, 128, 64, 500_000)
    assert build_config({"env": "MiniGrid-Empty-5x5-v0"}).total_frames == 60_000


def test_preset_name_is_the_preset_a_run_takes():
    """What `train` prints: the ale-py games' shared preset by name, an explicit --preset as given."""
    from trpo_torchrl.app.presets import PRESETS, preset_name, preset_overrides

    cases = {
        ("ALE/Breakout-v5", None): "atari",
        ("MiniGrid-Empty-5x5-v0", None): "MiniGrid-Empty-5x5-v0",
        ("FrozenLake-v1", None): "sb3-default",
        ("ALE/Pong-v5", "CartPole-v1"): "CartPole-v1",
    }
    for (env, preset), name in cases.items():
        assert preset_name(preset, env) == name
        assert preset_overrides(preset, env) == PRESETS[name]


def _load_benchmark(name: str):
    from tests.test_benchmarks import load

    return load(name)


@needs_atari
def test_atari_benchmark_tiny(tmp_path):
    """benchmarks/atari.py's smoke modes (ours only: sb3-contrib's CNN TRPO takes minutes here)."""
    out = tmp_path / "atari.json"
    result = _load_benchmark("atari").main(["--tiny", "--no-peer", "--threads", "1", "--out", str(out)])
    assert result["ours"][0]["frames"] == 256 and json.loads(out.read_text())["ours_fps"] > 0
    curve = _load_benchmark("atari").main(["--tiny", "--curve", "--threads", "1", "--logdir", str(tmp_path)])
    assert len(curve["rows"]) >= 2


@needs_minigrid
def test_minigrid_benchmark_tiny(tmp_path):
    out = tmp_path / "minigrid.json"
    result = _load_benchmark("learning_minigrid").main(["--tiny", "--task", "empty", "--out", str(out)])
    (row,) = result["rows"]
    assert row["frames"] == 256 and len(row["evaluations"]) >= 2
    assert json.loads(out.read_text())["rows"][0]["env"] == "MiniGrid-Empty-5x5-v0"
    assert row["cut"] and row["task_budget"] == 60_000  # a smoke run is a cut one too


@needs_minigrid
def test_minigrid_benchmark_cut_budget(tmp_path):
    """--frames trains a cut budget and the row says so (the task's own budget kept beside it)."""
    (row,) = _load_benchmark("learning_minigrid").main(["--tiny", "--task", "doorkey", "--frames", "128"])["rows"]
    assert (row["frames"], row["budget"], row["task_budget"], row["cut"]) == (128, 128, 500_000, True)
