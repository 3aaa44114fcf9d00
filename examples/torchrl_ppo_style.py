"""TRPO in a TorchRL training script of the usual shape (that of TorchRL's PPO MuJoCo example):
TorchRL's environment transforms, models, collector, advantage module and logger, with the PPO loss
and its optimiser replaced by the three TRPO pieces — ``TRPOLoss``, ``TrustRegionUpdate``,
``CriticFit``.

    python examples/torchrl_ppo_style.py                                  # Pendulum-v1
    python examples/torchrl_ppo_style.py --env HalfCheetah-v5 --total-frames 1000000
    python examples/torchrl_ppo_style.py --total-frames 2048 --frames-per-batch 512 --logdir /tmp/run

Every iteration logs the training return, the step's KL and acceptance, the critic's fit and the
norm of the actor's step to a TorchRL ``CSVLogger`` (``<logdir>/<exp-name>/scalars/*.csv``); every
``--eval-every`` iterations it evaluates the policy's deterministic action.
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    ExplorationType,
    ObservationNorm,
    RewardSum,
    StepCounter,
    TransformedEnv,
    set_exploration_type,
)
from torchrl.envs.libs.gym import GymEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives.value import GAE
from torchrl.record.loggers.csv import CSVLogger

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", help="Gymnasium id with a flat Box action space")
    parser.add_argument("--total-frames", type=int, default=200_000, help="environment steps in all")
    parser.add_argument("--frames-per-batch", type=int, default=2048, help="environment steps per iteration")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument("--lmbda", type=float, default=0.95, help="GAE λ")
    parser.add_argument("--max-kl", type=float, default=0.01, help="trust-region radius on the mean KL")
    parser.add_argument("--damping", type=float, default=0.1, help="added to the Fisher in conjugate gradient")
    parser.add_argument(
        "--fvp",
        default=None,
        choices=["gauss_newton", "kl_hessian"],
        help="Fisher-vector product (default: the library's)",
    )
    parser.add_argument("--critic-lr", type=float, default=1e-3, help="Adam learning rate of the critic")
    parser.add_argument("--critic-epochs", type=int, default=10, help="passes over the batch per critic fit")
    parser.add_argument("--critic-minibatch", type=int, default=64, help="states per critic Adam step")
    parser.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    parser.add_argument("--eval-every", type=int, default=10, help="evaluate every N iterations (0: never)")
    parser.add_argument("--eval-episodes", type=int, default=3, help="episodes per evaluation")
    parser.add_argument("--logdir", default="csv_logs", help="where the CSV logger writes")
    parser.add_argument("--exp-name", default="trpo_torchrl_ppo_style", help="the logger's experiment name")
    parser.add_argument("--seed", type=int, default=0, help="seeds torch and the environments")
    parser.add_argument("--device", default="cpu", help="where the models, the update and collection run")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- environment
def make_env(name: str, device: torch.device, obs_norm: ObservationNorm | None = None) -> TransformedEnv:
    """The task with observations standardised (statistics from a random rollout, or from
    ``obs_norm`` for an evaluation env), float32, step counts and episode returns."""
    if obs_norm is None:
        norm = ObservationNorm(in_keys=["observation"], standard_normal=True)
    else:  # the training env's statistics, frozen
        norm = ObservationNorm(
            obs_norm.loc.clone(), obs_norm.scale.clone(), in_keys=["observation"], standard_normal=True
        )
    env = TransformedEnv(GymEnv(name, device=device), Compose(DoubleToFloat(), norm, StepCounter(), RewardSum()))
    if obs_norm is None:
        norm.init_stats(num_iter=1000, reduce_dim=0, cat_dim=0)
    return env


# ---------------------------------------------------------------------------- models
def make_models(env: TransformedEnv, hidden: int, device: torch.device):
    """A TanhNormal actor (loc and a state-dependent scale from one MLP) and a ValueOperator critic."""
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.action_spec_unbatched
    action_dim = action_spec.shape[-1]
    policy_net = nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=[hidden, hidden], activation_class=nn.Tanh),
        NormalParamExtractor(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(policy_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high, "tanh_loc": False},
        return_log_prob=True,
        default_interaction_type=ExplorationType.RANDOM,
    )
    value_net = MLP(in_features=obs_dim, out_features=1, num_cells=[hidden, hidden], activation_class=nn.Tanh)
    critic = ValueOperator(value_net, in_keys=["observation"])
    return actor.to(device), critic.to(device)


def evaluate(actor, env, episodes: int) -> float:
    """Mean return of the deterministic policy over ``episodes`` episodes."""
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        for _ in range(episodes):
            rollout = env.rollout(10_000, actor, auto_cast_to_device=True, break_when_any_done=True)
            returns.append(rollout["next", "reward"].sum().item())
    return sum(returns) / len(returns)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    env = make_env(args.env, device)
    env.set_seed(args.seed)
    test_env = make_env(args.env, device, obs_norm=env.transform[1])
    test_env.set_seed(args.seed + 1)
    actor, critic = make_models(env, args.hidden, device)

    collector = Collector(
        env,
        actor,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.total_frames,
        device=device,
        auto_register_policy_transforms=False,  # the policy is memoryless: it needs no env transform
    )
    advantage = GAE(gamma=args.gamma, lmbda=args.lmbda, value_network=critic, average_gae=False)

    # the TRPO part: the loss, the trust-region actor step, the critic's regression
    loss = TRPOLoss(actor, critic)
    fvp = {"fvp": args.fvp} if args.fvp else {}
    actor_step = TrustRegionUpdate(loss, max_kl=args.max_kl, damping=args.damping, **fvp)
    critic_fit = CriticFit(loss, lr=args.critic_lr, epochs=args.critic_epochs, minibatch_size=args.critic_minibatch)

    logger = CSVLogger(exp_name=args.exp_name, log_dir=args.logdir)
    frames = 0
    start = time.perf_counter()
    for iteration, batch in enumerate(collector):
        frames += batch.numel()
        done = batch["next", "done"]
        if done.any():
            logger.log_scalar("train/reward", batch["next", "episode_reward"][done].mean().item(), frames)

        with torch.no_grad():
            advantage(batch)
        before = torch.nn.utils.parameters_to_vector(actor.parameters()).detach().clone()
        metrics = actor_step(batch)
        step_norm = (torch.nn.utils.parameters_to_vector(actor.parameters()).detach() - before).norm()
        critic_metrics = critic_fit(batch)
        collector.update_policy_weights_()

        logs = {
            "train/kl": metrics["kl"],
            "train/step_accepted": metrics["step_accepted"],
            "train/backtrack_steps": metrics["backtrack_steps"],
            "train/surrogate_improvement": metrics["surrogate_after"] - metrics["surrogate_before"],
            "train/actor_step_norm": step_norm,
            "train/explained_variance": critic_metrics["explained_variance"],
            "train/fps": frames / (time.perf_counter() - start),
        }
        for name, value in logs.items():
            logger.log_scalar(name, float(value), frames)

        if args.eval_every and (iteration + 1) % args.eval_every == 0:
            logger.log_scalar("eval/reward", evaluate(actor, test_env, args.eval_episodes), frames)
        print(
            f"iter {iteration:3d}  frames {frames:7d}  kl {float(metrics['kl']):.5f}  "
            f"accepted {bool(metrics['step_accepted'])}  time {time.perf_counter() - start:6.1f}s",
            flush=True,
        )
    collector.shutdown()
    env.close()
    test_env.close()


if __name__ == "__main__":
    main()
