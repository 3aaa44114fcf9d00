"""Reading a checkpoint runs nothing from it: files are unpickled with ``weights_only=True``, a file
that asks for any other global is refused with its name and the global (by ``eval``, ``train
--resume`` and :func:`load_checkpoint`), and version-1 checkpoints (which pickled numpy and
TensorDict objects) are read only when the user says the file is trusted."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from tests._app_runs import app_config, trainer_parameters
from trpo_torchrl.app import checkpoint as ckpt
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.train import Trainer, resume_trainer


class _Payload:
    """The classic torch.load exploit: unpickling calls ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_malicious(path, marker, config, version=ckpt.VERSION):
    """A checkpoint-shaped dict with the payload beside a real config, written as torch.save does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": ckpt.FORMAT, "version": version, "config": config, "actor": {}, "rng": _Payload(marker)}, path
    )


def _write_version_1(path, state):
    """A checkpoint written the way version 1 did: the run's objects pickled as they are."""
    torch.save({"format": ckpt.FORMAT, "version": 1, **state}, path)


@pytest.fixture
def small_run(tmp_path):
    trainer = Trainer(app_config(tmp_path, "run", 128))
    trainer.train()
    return trainer


@pytest.mark.parametrize("version", [ckpt.VERSION, 1])
def test_load_checkpoint_refuses_a_payload_and_runs_nothing(tmp_path, small_run, version):
    marker = tmp_path / "marker"
    bad = tmp_path / "evil.pt"
    _write_malicious(bad, marker, small_run.config.to_dict(), version)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(bad)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message
    assert str(bad) in message and "posix.system" in message
    if version == 1:  # what a version-1 file is told: re-save it, or trust it explicitly
        assert "--trust-checkpoint" in message and "re-save" in message


def test_eval_refuses_a_payload_and_runs_nothing(tmp_path, small_run, capsys):
    marker = tmp_path / "marker"
    bad = tmp_path / "evil.pt"
    _write_malicious(bad, marker, small_run.config.to_dict())
    assert main(["eval", "--checkpoint", str(bad), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err and "posix.system" in err
    # the flag for version-1 files does not open the door to a current-format file's payload
    assert main(["eval", "--checkpoint", str(bad), "--episodes", "1", "--trust-checkpoint"]) == 2
    assert not marker.exists()


def test_resume_refuses_a_payload_and_runs_nothing(tmp_path, small_run, capsys):
    marker = tmp_path / "marker"
    checkpoints = small_run.run_dir / "checkpoints"
    for name in ("final.pt", "last.pt"):
        _write_malicious(checkpoints / name, marker, small_run.config.to_dict())
    assert main(["train", "--resume", str(small_run.run_dir), "--total-frames", "256"]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(checkpoints / "final.pt") in err and "posix.system" in err


def test_a_new_checkpoint_needs_no_unsafe_load(small_run):
    """What the app writes loads with weights_only=True and nothing allow-listed."""
    path = small_run.run_dir / "checkpoints" / "final.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == ckpt.VERSION
    state = ckpt.load_checkpoint(path)
    assert isinstance(state["rng"]["numpy"][1], np.ndarray)  # rebuilt as the run saved it


def test_version_1_is_read_only_when_trusted(tmp_path, small_run, capsys):
    old = tmp_path / "v1.pt"
    _write_version_1(old, small_run.state_dict())
    with pytest.raises(ckpt.CheckpointError, match="version-1 checkpoint.*--trust-checkpoint"):
        ckpt.load_checkpoint(old)
    assert ckpt.load_checkpoint(old, trust=True)["iteration"] == small_run.iteration
    assert main(["eval", "--checkpoint", str(old), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(old) in err and "--trust-checkpoint" in err
    assert main(["eval", "--checkpoint", str(old), "--episodes", "1", "--trust-checkpoint"]) == 0


def test_trusted_version_1_resumes_exactly(tmp_path):
    full = Trainer(app_config(tmp_path, "full", 4 * 128))
    full.train()
    part = Trainer(app_config(tmp_path, "part", 2 * 128))
    part.train()
    last = part.run_dir / "checkpoints" / "last.pt"
    _write_version_1(last, part.state_dict())
    with pytest.raises(ckpt.CheckpointError, match="--trust-checkpoint"):
        resume_trainer(last, {"total_frames": 4 * 128})
    resumed = resume_trainer(last, {"total_frames": 4 * 128}, trust=True)
    resumed.train()
    a, b = trainer_parameters(full), trainer_parameters(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_refuses_trust_without_resume(tmp_path, capsys):
    assert main(["train", "--logdir", str(tmp_path), "--trust-checkpoint"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_state_encoding_round_trips_numpy_and_tensordicts():
    rng = np.random.default_rng(7)
    rng.random(3)
    state = {
        "arrays": [np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]), np.zeros((0, 4))],
        "scalar": np.float32(1.5),
        "legacy": np.random.RandomState(3).get_state(),
        "gen": rng,
        "td": TensorDict({"obs": torch.ones(2, 3), "next": TensorDict({"r": torch.zeros(2, 5)}, [2, 5])}, [2]),
        "od": OrderedDict(a=torch.ones(1)),
    }
    back = ckpt.decode_state(ckpt.encode_state(state))
    for x, y in zip(state["arrays"], back["arrays"]):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    assert type(back["scalar"]) is np.float32 and back["scalar"] == 1.5
    np.testing.assert_array_equal(back["legacy"][1], state["legacy"][1])
    assert back["gen"].random() == rng.random()
    assert back["td"]["next"].batch_size == torch.Size([2, 5]) and torch.equal(back["td"]["obs"], torch.ones(2, 3))
    assert type(back["od"]) is OrderedDict
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        ckpt.encode_state({"x": object()})
