"""Multi-agent TRPO on VMAS's navigation scenario: one policy per agent, each with its own trust region.

    pip install vmas
    python examples/vmas_navigation.py --iterations 50

The policy is a TorchRL ``MultiAgentMLP(share_params=False)``: every agent has its own network, the
agents' parameters stacked inside the module and the forward pass vmapped over them. Those stacked
parameters are exactly a population, so :class:`~trpo_torchrl.PopulationTrustRegionUpdate` takes
them as they are (it writes into them in place, so the collector's policy moves with it) and gives
each agent its own surrogate, Fisher, CG system, step size and line search — all in one batched
update. The batch's agent dimension, ``[envs, time, agents]``, is moved to the front to become the
member dimension. The critic is one network shared by the agents, applied to each agent's own
observation (a per-agent critic with shared weights), fitted with CriticFit.
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.modules import MLP, IndependentNormal, MultiAgentMLP, ProbabilisticActor

from trpo_torchrl import CriticFit, PopulationTrustRegionUpdate, TRPOLoss, gaussian_actor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="collect/update rounds")
    parser.add_argument("--num-envs", type=int, default=32, help="VMAS environments simulated together")
    parser.add_argument("--steps", type=int, default=100, help="steps per environment per round")
    parser.add_argument("--agents", type=int, default=3, help="agents in the navigation scenario")
    parser.add_argument("--max-kl", type=float, default=0.01, help="each agent's trust-region radius")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument("--lmbda", type=float, default=0.95, help="GAE λ")
    parser.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    parser.add_argument("--seed", type=int, default=0, help="seeds torch and the scenario")
    return parser.parse_args(argv)


def agent_parameters(policy_net: MultiAgentMLP, template: nn.Module, agents: int) -> TensorDict:
    """The MultiAgentMLP's own stacked parameter tensors, filed under the template actor's names.

    The leaves are the very tensors the MultiAgentMLP holds (no copy), so an update written into this
    TensorDict is what the collecting policy runs next.
    """
    stacked = dict(policy_net.params.flatten_keys(".").items())
    entries = {}
    for name, _ in template.named_parameters():
        match = [key for key in stacked if name.endswith("." + key)]
        if len(match) != 1:
            raise RuntimeError(f"no unique MultiAgentMLP parameter for the template's {name!r}: {match}")
        entries[tuple(name.split("."))] = stacked[match[0]]
    return TensorDict(entries, batch_size=[agents])


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    env = VmasEnv(
        "navigation",
        num_envs=args.num_envs,
        n_agents=args.agents,
        continuous_actions=True,
        max_steps=args.steps,
        seed=args.seed,
        clamp_actions=True,
    )  # the batch keeps the sampled action; the simulator gets it clipped
    env = TransformedEnv(env, RewardSum(in_keys=[env.reward_key], out_keys=[("agents", "episode_reward")]))
    obs_dim = env.observation_spec["agents", "observation"].shape[-1]
    act_dim = env.full_action_spec[env.action_key].shape[-1]
    mlp_kwargs = dict(depth=2, num_cells=args.hidden, activation_class=nn.Tanh)

    # the collecting policy: one network per agent, stacked in a MultiAgentMLP
    policy_net = MultiAgentMLP(
        n_agent_inputs=obs_dim,
        n_agent_outputs=2 * act_dim,
        n_agents=args.agents,
        centralized=False,
        share_params=False,
        **mlp_kwargs,
    )
    policy = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(policy_net, NormalParamExtractor()),
            in_keys=[("agents", "observation")],
            out_keys=[("agents", "loc"), ("agents", "scale")],
        ),
        in_keys=[("agents", "loc"), ("agents", "scale")],
        out_keys=[env.action_key],
        distribution_class=IndependentNormal,
        return_log_prob=True,
        log_prob_key=("agents", "action_log_prob"),
    )
    # one agent's network as a plain actor on the agents' sub-batch: the structure the update evaluates
    template = gaussian_actor(
        MLP(in_features=obs_dim, out_features=2 * act_dim, **mlp_kwargs), act_dim, state_dependent_scale=True
    )
    critic = TensorDictModule(
        MLP(in_features=obs_dim, out_features=1, **mlp_kwargs), in_keys=["observation"], out_keys=["state_value"]
    )
    loss = TRPOLoss(template, critic).make_value_estimator(gamma=args.gamma, lmbda=args.lmbda)
    update = PopulationTrustRegionUpdate(loss, agent_parameters(policy_net, template, args.agents), max_kl=args.max_kl)
    critic_fit = CriticFit(loss, lr=3e-4, epochs=4, minibatch_size=1024)

    frames = args.num_envs * args.steps
    collector = Collector(env, policy, frames_per_batch=frames, total_frames=args.iterations * frames)
    start = time.perf_counter()
    for iteration, batch in enumerate(collector):
        # [envs, time] with per-agent entries [envs, time, agents] → the agents' batch [agents, envs, time]
        agents = batch.get("agents").clone(False)
        nxt = batch.get("next")
        done = nxt.get("done").unsqueeze(-2).expand(*agents.batch_size, 1)  # the scenario ends for all agents at once
        agents.set(
            "next",
            TensorDict(
                {
                    "observation": nxt.get(("agents", "observation")),
                    "reward": nxt.get(("agents", "reward")),
                    "done": done,
                    "terminated": nxt.get("terminated").unsqueeze(-2).expand(*agents.batch_size, 1),
                },
                agents.batch_size,
            ),
        )
        agents = agents.permute(2, 0, 1).contiguous()
        with torch.no_grad():
            loss.value_estimator(agents)  # 1. each agent's advantages (FusedGAE along time)
        before = policy_net.params.clone()
        actor_metrics = update(agents)  # 2. every agent's own trust-region step, in one update
        # the step lands in the collecting policy's own parameters (shown per agent as the largest change)
        moved = [
            max(
                (a - b)[i].abs().max().item()
                for a, b in zip(policy_net.params.values(True, True), before.values(True, True))
            )
            for i in range(args.agents)
        ]
        critic_metrics = critic_fit(agents)  # 3. the shared critic
        collector.update_policy_weights_()

        returns = nxt.get(("agents", "episode_reward"))[done.expand_as(nxt.get(("agents", "episode_reward")))]
        mean_return = returns.mean().item() if returns.numel() else float("nan")
        accepted = "".join("y" if a else "n" for a in actor_metrics["step_accepted"].tolist())
        kls = " ".join(f"{k:.4f}" for k in actor_metrics["kl"].tolist())
        print(
            f"iter {iteration:3d}  frames {(iteration + 1) * frames:7d}  return {mean_return:8.3f}  "
            f"accepted {accepted}  kl [{kls}]  moved [{' '.join(f'{d:.1e}' for d in moved)}]  explained_var {critic_metrics['explained_variance'].item():.2f}  "
            f"time {time.perf_counter() - start:6.1f}s",
            flush=True,
        )
    collector.shutdown()


if __name__ == "__main__":
    main()
