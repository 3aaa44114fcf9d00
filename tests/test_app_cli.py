"""The training application from its command line: train, eval and plot end to end, eval's
determinism, video and errors, CLI errors, loggers, and `--device cuda` without a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests._app_runs import train_tiny
from tests._support import needs_mujoco
from trpo_torchrl.app import checkpoint as ckpt
from trpo_torchrl.app.cli import main


def test_cli_train_eval_plot_end_to_end(tmp_path, capsys):
    assert train_tiny(tmp_path, "--env", "CartPole-v1", "--total-frames", "512", "--eval-episodes", "3") == 0
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


@needs_mujoco
def test_a_run_too_short_for_an_episode_still_succeeds_and_says_why_there_is_no_curve(tmp_path, capsys):
    assert train_tiny(tmp_path, "--env", "HalfCheetah-v5", "--total-frames", "100", "--eval-episodes", "0") == 0
    out = capsys.readouterr().out
    assert "for 128 frames (1 iteration of 128); --total-frames 100 rounded up to whole batches," in out
    assert "curve:      not drawn (plot: no run has a finite value of 'train_return' yet" in out
    assert not (tmp_path / "run" / "curve.png").exists()


def test_eval_is_deterministic(tmp_path, capsys):
    assert train_tiny(tmp_path, "--total-frames", "128", "--eval-episodes", "0") == 0
    capsys.readouterr()
    lines = []
    for _ in range(2):
        assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "3", "--seed", "7"]) == 0
        lines.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert lines[0] == lines[1]


def test_eval_names_what_does_not_fit(tmp_path, capsys):
    assert train_tiny(tmp_path, "--total-frames", "128", "--eval-episodes", "0") == 0
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
        (
            ["--env", "Blackjack-v1"],
            "environment 'Blackjack-v1': the training app cannot model the observation space "
            "Tuple(Discrete(32), Discrete(11), Discrete(2)); it supports Box",
        ),
    ],
)
def test_cli_errors(tmp_path, capsys, args, message):
    try:
        code = train_tiny(tmp_path, "--total-frames", "128", *args)
    except SystemExit as exit_:  # argparse rejects unknown flags itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written: no empty run directory either


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_config_error(tmp_path, capsys):
    assert train_tiny(tmp_path, "--total-frames", "128", "--device", "cuda") == 2
    assert "torch sees 0 CUDA device(s)" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.csv"))


def test_eval_video(tmp_path, capsys):
    pytest.importorskip("pygame")
    assert train_tiny(tmp_path, "--total-frames", "128", "--eval-episodes", "0") == 0
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "1", "--video", str(tmp_path / "video")])
        == 0
    )
    gif = tmp_path / "video" / "episode.gif"
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")


def test_unavailable_logger_is_a_clear_error(tmp_path, capsys):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert train_tiny(tmp_path, "--total-frames", "128", "--logger", "tensorboard") == 2
        assert "pip install 'trpo-torchrl[tensorboard]'" in capsys.readouterr().err
    else:
        pytest.skip("tensorboard is installed")
