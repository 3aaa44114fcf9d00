"""TRPO with an LSTM policy on CartPoleNoVel-v1 (CartPole without its velocities) in a plain TorchRL loop.

    python examples/recurrent_cartpole.py --iterations 50

Each observation holds only the cart position and the pole angle, so the policy has to infer the
velocities from the history: its LSTM (TorchRL's default ``LSTMModule``) carries a hidden state from
step to step. The environment stores that state at every step (the module's
``make_tensordict_primer()``) and marks episode starts (``InitTracker``); the collector returns
``[envs, time]`` batches, which TRPOLoss and TrustRegionUpdate keep in that layout and re-run the
LSTM over, from the state stored at each row's first step. Prints one line per iteration.
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import torch
from gymnasium.vector import AutoresetMode
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.envs import GymWrapper, InitTracker, RewardSum, TransformedEnv
from torchrl.modules import MLP, LSTMModule, ProbabilisticActor, ValueOperator

import trpo_torchrl  # noqa: F401  (registers CartPoleNoVel-v1)
from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="collect/update rounds")
    parser.add_argument("--envs", type=int, default=8, help="environments stepped together (batch rows)")
    parser.add_argument("--steps", type=int, default=128, help="steps per environment per round (row length)")
    parser.add_argument("--max-kl", type=float, default=0.01, help="trust-region radius on the mean KL")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument("--lmbda", type=float, default=0.95, help="GAE λ")
    parser.add_argument("--hidden", type=int, default=32, help="LSTM state size")
    parser.add_argument("--seed", type=int, default=0, help="seeds torch and the environments")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    vector_env = gymnasium.make_vec(
        "CartPoleNoVel-v1",
        args.envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    env = TransformedEnv(GymWrapper(vector_env, categorical_action_encoding=True), InitTracker())
    env.append_transform(RewardSum())
    obs_dim = env.observation_spec["observation"].shape[-1]

    lstm = LSTMModule(input_size=obs_dim, hidden_size=args.hidden, in_key="observation", out_key="features")
    env.append_transform(lstm.make_tensordict_primer())  # stores the hidden state at every step
    env.set_seed(args.seed)
    head = TensorDictModule(nn.Linear(args.hidden, 2), in_keys=["features"], out_keys=["logits"])
    actor = ProbabilisticActor(
        TensorDictSequential(lstm, head),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    # the critic reads the same partial observation; a feed-forward one keeps the example short
    # (an LSTM critic works too: the value estimator and CriticFit run it over the sequences)
    critic = ValueOperator(MLP(in_features=obs_dim, out_features=1, num_cells=[64, 64]), in_keys=["observation"])
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=args.gamma, lmbda=args.lmbda)
    actor_step = TrustRegionUpdate(loss, max_kl=args.max_kl)
    critic_fit = CriticFit(loss, lr=1e-3, epochs=5, minibatch_size=128)

    frames = args.envs * args.steps
    collector = Collector(env, actor, frames_per_batch=frames, total_frames=args.iterations * frames)
    start = time.perf_counter()
    for iteration, batch in enumerate(collector):  # batch: [envs, steps]
        with torch.no_grad():
            loss.value_estimator(batch)  # 1. advantages and λ-returns
        actor_metrics = actor_step(batch)  # 2. the trust-region step, the LSTM re-run over each row
        critic_metrics = critic_fit(batch)  # 3. the critic's regression
        collector.update_policy_weights_()

        done = batch["next", "done"].squeeze(-1)
        returns = batch["next", "episode_reward"][done]
        mean_return = returns.mean().item() if returns.numel() else float("nan")
        print(
            f"iter {iteration:3d}  frames {(iteration + 1) * frames:7d}  "
            f"return {mean_return:7.1f}  episodes {returns.numel():4d}  "
            f"kl {actor_metrics['kl'].item():.4f}  accepted {bool(actor_metrics['step_accepted'])}  "
            f"explained_var {critic_metrics['explained_variance'].item():.2f}  "
            f"time {time.perf_counter() - start:6.1f}s",
            flush=True,
        )
    collector.shutdown()


if __name__ == "__main__":
    main()
