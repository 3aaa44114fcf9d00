"""The training application's configuration: config files and their precedence, what a resume may
and may not change, threads, and the KL measure an old checkpoint was trained with."""

from __future__ import annotations

import pytest
import torch

from tests._app_runs import app_config
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import ConfigError, TrainConfig, build_config
from trpo_torchrl.app.train import Trainer, resume_trainer


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


def test_resume_refuses_changes_to_the_past(tmp_path):
    t = Trainer(app_config(tmp_path, "r", 128))
    t.train()
    with pytest.raises(ValueError, match="cannot change: max_kl"):
        resume_trainer(t.run_dir, {"max_kl": 0.5})


def test_resume_takes_no_config_file_and_needs_a_run_directory(tmp_path, capsys):
    first = Trainer(app_config(tmp_path, "r", 128))
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


def test_threads_sets_torchs_thread_count(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Trainer(app_config(tmp_path, "t1", 128, threads=1)).collector.shutdown()
        assert torch.get_num_threads() == 1
        t = Trainer(app_config(tmp_path, "t0", 128))  # 0 (the default) leaves it as it is
        assert torch.get_num_threads() == 1
        t.train()
        resumed = resume_trainer(t.run_dir, {"threads": 2, "total_frames": 256})  # a machine setting
        assert resumed.config.threads == 2 and torch.get_num_threads() == 2
        resumed.collector.shutdown()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads=-1 must be >= 0"):
        app_config(tmp_path, "bad", 128, threads=-1)


def test_checkpoint_configs_keep_the_kl_measure_they_were_trained_with():
    from trpo_torchrl.app.config import config_from_dict

    # new runs measure the KL as sb3-contrib does; a checkpoint from before the option existed summed it
    assert TrainConfig().kl_reduction == "mean"
    assert config_from_dict(TrainConfig().to_dict()).kl_reduction == "mean"
    legacy = TrainConfig().to_dict()
    del legacy["kl_reduction"], legacy["critic_eps"]
    assert config_from_dict(legacy).kl_reduction == "sum"
    assert config_from_dict(legacy).critic_eps == 1e-8
