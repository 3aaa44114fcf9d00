"""Scaling the training app out: multi-process and Ray collection, learner ranks under a torchrun-like
launch, and the errors a user meets when a scale-out setting cannot work."""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests._support import free_port
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import build_config
from trpo_torchrl.app.train import Trainer, resume_trainer

# 2 environments × 32 steps: 64 frames per iteration, whatever the number of workers or ranks
SMALL = [
    "--num-envs",
    "2",
    "--steps-per-env",
    "32",
    "--critic-epochs",
    "1",
    "--critic-minibatch",
    "64",
    "--progress",
    "false",
    "--eval-episodes",
    "0",
    "--logger",
    "none",
]
FRAMES_PER_BATCH = 64


def _check_batches(monkeypatch):
    """Wraps Trainer.step: records each batch's size and checks that it was collected by the
    learner's current policy (the stored log-probabilities are the actor's own), which holds only if
    the workers received the weights of every update."""
    seen = []
    original = Trainer.step

    def checked(self, batch):
        with torch.no_grad():
            dist = self.actor.get_dist(batch.select("observation").copy())
            log_prob = dist.log_prob(batch["action"]).reshape(batch.shape)
        torch.testing.assert_close(log_prob, batch["action_log_prob"].reshape(batch.shape), rtol=1e-5, atol=1e-5)
        seen.append(batch.numel())
        return original(self, batch)

    monkeypatch.setattr(Trainer, "step", checked)
    return seen


def _frames_column(run: Path) -> list[int]:
    with (run / "progress.csv").open() as f:
        return [int(row["frames"]) for row in csv.DictReader(f) if row["frames"]]


@pytest.mark.parametrize(
    "collector",
    [
        "multisync",
        pytest.param(
            "ray",
            marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (the 'ray' extra)"),
        ),
    ],
)
@pytest.mark.slow
def test_collectors_deliver_the_batch_on_policy(tmp_path, monkeypatch, capsys, collector):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray instance, started for the run
    seen = _check_batches(monkeypatch)
    threads, next_batch = [], Trainer.next_batch

    def counted(self):
        threads.append(torch.get_num_threads())  # while the learner runs
        return next_batch(self)

    monkeypatch.setattr(Trainer, "next_batch", counted)
    before = torch.get_num_threads()
    try:
        # --threads reaches TorchRL's multi-process collector, which would otherwise pick its own count
        code = main(
            [
                "train",
                "--logdir",
                str(tmp_path),
                "--run-name",
                "run",
                *SMALL,
                "--env",
                "CartPole-v1",
                "--total-frames",
                str(3 * FRAMES_PER_BATCH),
                "--collector",
                collector,
                "--workers",
                "2",
                "--threads",
                "3",
            ]
        )
    finally:
        torch.set_num_threads(before)
    assert code == 0, capsys.readouterr().err
    assert seen == [FRAMES_PER_BATCH] * 3
    assert threads == [3] * 3
    assert _frames_column(tmp_path / "run") == [64, 128, 192]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()


def _port_nobody_listens_on() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: connecting to it is refused


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--collector", "multisync", "--workers", "0"], {}, "workers=0 must be >= 1"),
        (["--collector", "multisync", "--workers", "3"], {}, "steps_per_env=32 does not divide over workers=3"),
        (["--collector", "bogus"], {}, "collector='bogus' must be 'direct', 'sync', 'multisync' or 'ray'"),
        (["--ray-address", "127.0.0.1:6379"], {}, "needs collector='ray'"),
        ([], {"WORLD_SIZE": "3"}, "does not divide over world size 3 × workers 1"),
        (["--collector", "ray", "--workers", "2"], {"RAY_ADDRESS": "127.0.0.1:{port}"}, "cannot reach the Ray cluster"),
        (["--collector", "ray", "--ray-address", "127.0.0.1:{port}"], {}, "cannot reach the Ray cluster"),
        (["--collector", "ray", "--ray-address", "nowhere"], {}, "is not host:port"),
    ],
)
def test_scale_out_errors(tmp_path, monkeypatch, capsys, args, env, message):
    port = str(_port_nobody_listens_on())
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=port))
    args = [a.format(port=port) for a in args]
    code = main(["train", "--logdir", str(tmp_path), "--run-name", "run", *SMALL, "--total-frames", "64", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def _learner_rank(rank: int, world: int, port: int, logdir: str, out: str, model: dict | None = None) -> None:
    """One learner rank, launched the way torchrun launches one: the rendezvous in the environment."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    result = {}
    try:

        def config(name, frames):
            return build_config(
                dict(
                    {"env": "CartPole-v1", **(model or {})},
                    total_frames=frames,
                    num_envs=2,
                    steps_per_env=32,
                    critic_epochs=2,
                    critic_minibatch=32,
                    progress=False,
                    eval_episodes=0,
                    logdir=logdir,
                    run_name=name,
                    checkpoint_every=1,
                    logger="none",
                )
            )

        full = Trainer(config("full", 3 * FRAMES_PER_BATCH))
        full.train()
        part = Trainer(config("part", 1 * FRAMES_PER_BATCH))
        part.train()
        resumed = resume_trainer(part.run_dir / "checkpoints" / "last.pt", {"total_frames": 3 * FRAMES_PER_BATCH})
        result["resumed_at"] = resumed.iteration
        resumed.train()
        result["full"] = {k: v.clone() for k, v in full.actor.state_dict().items()}
        result["full"].update({f"critic.{k}": v.clone() for k, v in full.critic.state_dict().items()})
        result["resumed"] = {k: v.clone() for k, v in resumed.actor.state_dict().items()}
        result["resumed"].update({f"critic.{k}": v.clone() for k, v in resumed.critic.state_dict().items()})
        result["frames"] = full.frames
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        torch.save(result, Path(out) / f"rank{rank}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [{}, {"env": "CartPoleNoVel-v1", "policy": "lstm", "rnn_hidden": 8, "hidden_sizes": (8,)}],
    ids=["mlp", "lstm"],
)
def test_learner_ranks_train_identically_and_resume_exactly(tmp_path, model):
    """Two learner ranks (an MLP, and an LSTM whose batches are re-run sequence by sequence)."""
    world, port = 2, free_port()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_learner_rank, args=(r, world, port, str(tmp_path), str(tmp_path), model))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r} failed:\n{res['error']}"
    r0, r1 = results
    assert r0["resumed_at"] == 1 and r0["frames"] == 3 * FRAMES_PER_BATCH
    for key in r0["full"]:
        assert torch.equal(r0["full"][key], r1["full"][key]), f"{key} differs between ranks"
        assert torch.equal(r0["full"][key], r0["resumed"][key]), f"{key}: rank 0's resumed run differs"
        assert torch.equal(r1["full"][key], r1["resumed"][key]), f"{key}: rank 1's resumed run differs"
    # rank 0 alone wrote the logs and the checkpoints, which hold both ranks' own state
    assert _frames_column(tmp_path / "full") == [64, 128, 192]
    state = torch.load(tmp_path / "full" / "checkpoints" / "final.pt", weights_only=False)
    assert len(state["ranks"]) == world
    assert state["ranks"][0]["env_state"] is not None and state["ranks"][1]["env_state"] is not None
