"""TRPO on CartPole-v1 in a plain TorchRL loop: Collector + FusedGAE + TRPOLoss + TrustRegionUpdate.

    python examples/trpo_cartpole.py --iterations 30

Each iteration collects a fresh on-policy batch, then does the three TRPO lines: advantages and
λ-returns, the actor's trust-region step, the critic's regression. It prints one line per iteration.
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, RewardSum, StepCounter, TransformedEnv

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate, categorical_actor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30, help="collect/update rounds")
    parser.add_argument("--frames-per-batch", type=int, default=2048, help="environment steps per round")
    parser.add_argument("--max-kl", type=float, default=0.01, help="trust-region radius on the mean KL")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument("--lmbda", type=float, default=0.97, help="GAE λ")
    parser.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    parser.add_argument("--seed", type=int, default=0, help="seeds torch and the environment")
    return parser.parse_args(argv)


def mlp(inputs: int, outputs: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, outputs)
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    env = TransformedEnv(GymEnv("CartPole-v1"), StepCounter())
    env.append_transform(RewardSum())
    env.set_seed(args.seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    num_actions = env.action_spec.shape[-1]

    actor = categorical_actor(mlp(obs_dim, num_actions, args.hidden), spec=env.action_spec)
    critic = TensorDictModule(mlp(obs_dim, 1, args.hidden), in_keys=["observation"], out_keys=["state_value"])
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=args.gamma, lmbda=args.lmbda)
    actor_step = TrustRegionUpdate(loss, max_kl=args.max_kl)
    critic_fit = CriticFit(loss, lr=1e-3, epochs=5, minibatch_size=128)

    collector = Collector(
        env,
        actor,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.iterations * args.frames_per_batch,
        auto_register_policy_transforms=False,  # the policy is memoryless: it needs no env transform
    )
    start = time.perf_counter()
    for iteration, batch in enumerate(collector):
        with torch.no_grad():
            loss.value_estimator(batch)  # 1. advantages and λ-returns (FusedGAE)
        actor_metrics = actor_step(batch)  # 2. the trust-region step on the actor
        critic_metrics = critic_fit(batch)  # 3. the critic's regression
        collector.update_policy_weights_()

        done = batch["next", "done"].squeeze(-1)
        returns = batch["next", "episode_reward"][done]
        mean_return = returns.mean().item() if returns.numel() else float("nan")
        print(
            f"iter {iteration:3d}  frames {(iteration + 1) * args.frames_per_batch:7d}  "
            f"return {mean_return:7.1f}  episodes {returns.numel():4d}  "
            f"kl {actor_metrics['kl'].item():.4f}  accepted {bool(actor_metrics['step_accepted'])}  "
            f"backtracks {actor_metrics['backtrack_steps'].item()}  "
            f"explained_var {critic_metrics['explained_variance'].item():.2f}  "
            f"time {time.perf_counter() - start:6.1f}s",
            flush=True,
        )
    collector.shutdown()


if __name__ == "__main__":
    main()
