"""``trpo-torchrl``: train, evaluate and plot from the command line.

trpo-torchrl train [--env ENV] [--preset NAME] [--total-frames N] [--seed S] [--config FILE] ...
trpo-torchrl train --resume RUN_DIR_OR_CHECKPOINT_OR_SEEDS_GROUP [--total-frames N]
trpo-torchrl eval --checkpoint PATH [--episodes N] [--seed S] [--video DIR] [--json]
trpo-torchrl plot RUN_DIR... [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import FIELDS, ConfigError, build_config, field_docs
from .errors import AppError


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    docs = field_docs()
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = f"{docs.get(name, '')} (default: {default!r})"
        # every flag defaults to "not given", so only what the user typed overrides presets/files
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="BOOL", help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)
    parser.add_argument("--config", dest="_config", default=None, metavar="FILE", help="YAML file of config keys")
    parser.add_argument(
        "--resume",
        dest="_resume",
        default=None,
        metavar="PATH",
        help="continue the run saved in this checkpoint or run directory, or every member of a --seeds group folder",
    )
    parser.add_argument(
        "--trust-checkpoint",
        dest="_trust_checkpoint",
        action="store_true",
        help=(
            "also read a version-1 checkpoint (written before checkpoints were restricted to tensors and "
            "plain data); reading one runs any code the file holds, so pass this only for files you trust"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trpo-torchrl", description="TRPO for TorchRL: train, evaluate, plot.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a policy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Each setting comes from, lowest first: the defaults shown below, the environment's preset "
            "(its rl-zoo3 hyperparameters, or --preset NAME), a --config YAML file, then the flags given "
            "here. So the defaults below are what a task without a preset gets: a plain `train` on "
            "CartPole-v1 runs its preset's 100k frames with 2 environments of 512 steps. The run's "
            "config.yaml records what was used. Your own environment: --env module:Id [--env-kwargs MAPPING]. "
            "Spaces: Discrete, MultiDiscrete, MultiBinary and flat Box actions; flat Box, uint8 image "
            "(HxWxC or CxHxW), Discrete/MultiDiscrete/MultiBinary (one-hot) and Dict observations; "
            "--policy auto|mlp|cnn|lstm|gru (docs/usage.md, 'Your own environment', 'Recurrent policies')."
        ),
    )
    _add_train_flags(train)
    ev = sub.add_parser("eval", help="evaluate a checkpoint deterministically")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint file or a run directory")
    ev.add_argument("--episodes", type=int, default=10, help="episodes to run (default: 10)")
    ev.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the evaluation environments (default: the run's own evaluation seed, its seed + 10000, "
        "so eval on a final checkpoint runs the episodes of the run's final evaluation)",
    )
    ev.add_argument("--video", default=None, metavar="DIR", help="also render one episode to DIR/episode.gif")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=(
            "also read a version-1 checkpoint (written before checkpoints were restricted to tensors and "
            "plain data); reading one runs any code the file holds, so pass this only for files you trust"
        ),
    )
    pl = sub.add_parser("plot", help="plot learning curves (mean ± std across seeds)")
    pl.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    pl.add_argument("--out", default=None, help="PNG to write (default: curves.png beside the first run)")
    pl.add_argument("--column", default="train_return", help="progress.csv column to plot (default: train_return)")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .presets import preset_name
    from .train import Trainer, resume_trainer

    cli = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    if args._trust_checkpoint and not args._resume:
        raise ConfigError("--trust-checkpoint applies to the checkpoint --resume reads; give it with --resume")
    if args._resume:
        if args._config:
            raise ConfigError("--resume keeps the run's configuration; --config cannot be combined with it")
        from .population import population_group, resume_group

        if population_group(args._resume) is not None:  # a --seeds M group folder: every member goes on
            return resume_group(args._resume, cli, trust=args._trust_checkpoint)
        trainer = resume_trainer(args._resume, cli, trust=args._trust_checkpoint)
        if trainer.ranks.is_main:
            print(f"resuming {trainer.run_dir} at iteration {trainer.iteration} ({trainer.frames} frames)")
    else:
        config = build_config(cli, args._config)
        if config.seeds > 1:
            from .population import train_population

            return train_population(config)
        trainer = Trainer(config)
        ranks = f" on {trainer.ranks.world_size} learner ranks" if trainer.ranks.world_size > 1 else ""
        if trainer.ranks.is_main:
            print(
                f"training {config.env} (preset {preset_name(config.preset, config.env)}) "
                f"for {config.frames_note()}, seed {config.seed}{ranks} -> {trainer.run_dir}"
            )
    result = trainer.train()
    if not trainer.ranks.is_main:  # under torchrun rank 0 reports for all
        return result.exit_status
    if result.interrupted:
        return result.exit_status  # 130 after Ctrl-C, 143 after SIGTERM
    from .evaluate import evaluation_seed
    from .plot import curve_after_training

    curve = curve_after_training([result.run_dir], result.run_dir / "curve.png")
    print(f"done: {result.frames} frames in {result.iterations} iterations")
    if result.eval_mean is not None:
        print(
            f"evaluation: mean_return={result.eval_mean:.2f} std_return={result.eval_std:.2f} "
            f"episodes={trainer.config.eval_episodes} seed={evaluation_seed(trainer.config)}"
        )
    print(
        f"logs:       {result.run_dir / 'progress.csv'} (and {trainer.config.logger} logs in {result.run_dir / 'logs'})"
    )
    print(f"checkpoint: {result.checkpoint}")
    print(f"curve:      {curve}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .checkpoint import CheckpointError, load_checkpoint
    from .config import config_from_dict
    from .envs import make_vector_env
    from .evaluate import evaluate_actor, evaluation_seed, record_video
    from .models import build_models
    from .spaces import SpaceError

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    if args.video and Path(args.video).exists() and not Path(args.video).is_dir():
        raise ConfigError(f"--video takes a folder (episode.gif is written into it); {args.video!r} is a file")
    state = load_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    config = config_from_dict(state["config"])
    seed = evaluation_seed(config) if args.seed is None else args.seed
    if config.threads:
        torch.set_num_threads(config.threads)  # the run's own thread count: its numbers, not another's
    venv = make_vector_env(config.env, 1, seed=seed, env_kwargs=config.env_kwargs, policy=config.policy)
    try:
        actor, critic, _ = build_models(config, venv.single_observation_space, venv.single_action_space)
    except SpaceError as err:
        raise ConfigError(f"environment {config.env!r}: {err}") from None
    finally:
        venv.close()
    try:
        actor.load_state_dict(state["actor"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {str(args.checkpoint)!r}: its actor does not fit the model its config builds "
            f"for {config.env} ({str(err).splitlines()[0]})"
        ) from None
    actor.eval()
    returns = evaluate_actor(
        actor,
        config.env,
        args.episodes,
        seed=seed,
        device=torch.device(config.device),
        env_kwargs=config.env_kwargs,
        policy=config.policy,
    )
    mean, std = float(np.mean(returns)), float(np.std(returns))
    if args.video:
        Path(args.video).mkdir(parents=True, exist_ok=True)
        gif = Path(args.video) / "episode.gif"
        record_video(
            actor,
            config.env,
            gif,
            seed=seed,
            device=config.device,
            env_kwargs=config.env_kwargs,
            policy=config.policy,
        )
        print(f"video: {gif}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "mean_return": mean,
                    "std_return": std,
                    "episodes": len(returns),
                    "returns": returns,
                    "env": config.env,
                    "seed": seed,
                }
            )
        )
    else:
        print(f"mean_return={mean:.4f} std_return={std:.4f} seed={seed} episodes={len(returns)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import plot_runs

    out = args.out or Path(args.runs[0]).resolve().parent / "curves.png"
    print(f"wrote {plot_runs(args.runs, out, column=args.column)}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .spaces import forget_printed

    forget_printed()
    try:
        return {"train": _train, "eval": _eval, "plot": _plot}[args.command](args)
    except AppError as err:  # what the user asked for cannot be done; anything else is a bug: its traceback shows
        print(f"trpo-torchrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
