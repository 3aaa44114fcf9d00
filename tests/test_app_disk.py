"""A run directory that cannot be written, and a disk that fills up mid-run: one line before training
starts for the first; for the second the previous checkpoint stays whole, the run stops with a line
naming the file and the error, and every row already logged stays in progress.csv."""

from __future__ import annotations

import csv
import errno
from pathlib import Path

import pytest
import torch

from tests._app_runs import app_config, train_tiny
from trpo_torchrl.app import checkpoint as ckpt
from trpo_torchrl.app.checkpoint import CheckpointWriteError, load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.rundir import ProgressLog, RunDirError, unwritable
from trpo_torchrl.app.train import Trainer

QUIET = ["--eval-episodes", "0", "--logger", "none"]


def _iterations(run: Path) -> list[int]:
    with (run / "progress.csv").open() as f:
        return [int(row["iteration"]) for row in csv.DictReader(f) if row["frames"]]


def test_a_run_directory_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    # tests run as root, where a read-only mode does not stop writes: a path under a regular file does
    (tmp_path / "file").write_text("not a folder")
    logdir = tmp_path / "file" / "sub"
    code = main(["train", "--logdir", str(logdir), "--run-name", "run", "--total-frames", "128", *QUIET])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"run directory {str(logdir / 'run')!r} cannot be written" in err and "--logdir" in err


def test_the_write_probe_leaves_nothing_behind(tmp_path, monkeypatch):
    assert unwritable(tmp_path / "a" / "b") is None
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone again

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    message = unwritable(tmp_path / "a" / "b")
    assert message is not None and "No space left on device" in message
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_mid_run_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    saves, save = [0], torch.save

    def fills_up(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] == 3:  # the third iteration's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", fills_up)
    code = train_tiny(tmp_path, "--total-frames", str(5 * 128), "--checkpoint-every", "1", *QUIET)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    assert f"cannot write checkpoint {str(last)!r}: No space left on device" in err
    assert f"--resume {run}" in err
    assert load_checkpoint(last)["iteration"] == 2  # the previous checkpoint, whole
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # no temporary file left
    assert _iterations(run) == [1, 2, 3]  # the third iteration was logged before its checkpoint failed


def test_a_failed_checkpoint_write_raises_an_app_error_from_the_trainer(tmp_path, monkeypatch):
    trainer = Trainer(app_config(tmp_path, "run", 3 * 128))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full)  # the write itself fails, after the temporary file exists
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []
    assert _iterations(tmp_path / "run") == [1]


def test_a_progress_log_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    log = ProgressLog(tmp_path)
    log.write({"iteration": 1, "frames": 128})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(RunDirError, match="progress.csv.*No space left on device"):
        log.write({"iteration": 2, "frames": 256})
    monkeypatch.undo()
    assert _iterations(tmp_path) == [1]
