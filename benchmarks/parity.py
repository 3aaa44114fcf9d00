"""Does our actor step equal sb3-contrib's on sb3-contrib's own batches?

sb3-contrib's TRPO runs with the task's rl-zoo3 preset and collects its batches as usual. Before each
of its ``TRPO.train()`` calls, its batch (observations, actions, old log-probabilities, advantages)
and its actor's weights are copied into our Gaussian actor, and our TrustRegionUpdate takes one step
on that batch under each KL measure: ``kl_reduction="mean"`` (the KL averaged over action
dimensions, which is what sb3-contrib computes) and ``"sum"`` (the paper's KL of the joint action
distribution) with the same max-KL and damping numbers. Then sb3-contrib's own ``train()`` runs and
the actor parameters it wrote are compared with ours: the relative difference ``|θ_sb3 − θ_ours| /
|θ_ours − θ_old|``, the ratio of the step lengths, and the per-dimension log-std step.

    python benchmarks/parity.py                              # HalfCheetah-v5, 3 batches
    python benchmarks/parity.py --env Hopper-v5 --iters 2 --out bench_out/parity.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, our_config, sb3_available, sb3_trpo, write_json  # noqa: E402


def our_actor_from_sb3(policy, act_dim: int):
    """Our gaussian_actor with the weights of sb3's actor (mlp_extractor.policy_net, action_net, log_std)."""
    from trpo_torchrl import gaussian_actor

    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)] + [policy.action_net]
    activation = type(next(m for m in policy.mlp_extractor.policy_net if not isinstance(m, nn.Linear)))
    layers: list[nn.Module] = []
    for i, src in enumerate(linears):
        lin = nn.Linear(src.in_features, src.out_features)
        with torch.no_grad():
            lin.weight.copy_(src.weight)
            lin.bias.copy_(src.bias)
        layers.append(lin)
        if i < len(linears) - 1:
            layers.append(activation())
    actor = gaussian_actor(nn.Sequential(*layers), act_dim)
    with torch.no_grad():
        next(p for name, p in actor.named_parameters() if name.endswith("log_std")).copy_(policy.log_std)
    return actor


def sb3_actor_theta(policy) -> torch.Tensor:
    """sb3's actor parameters, flat, in our actor's order (layers, then log_std)."""
    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)] + [policy.action_net]
    parts = [t.detach().reshape(-1) for lin in linears for t in (lin.weight, lin.bias)]
    return torch.cat(parts + [policy.log_std.detach().reshape(-1)])


def our_step(policy, batch, config, kl_reduction: str):
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule

    from trpo_torchrl import TRPOLoss, TrustRegionUpdate

    obs, act, old_log_prob, adv = batch
    actor = our_actor_from_sb3(policy, act.shape[-1])
    critic = TensorDictModule(nn.Linear(obs.shape[-1], 1), in_keys=["observation"], out_keys=["state_value"])
    with torch.no_grad():
        td = actor(TensorDict({"observation": obs}, [obs.shape[0]]))  # loc and scale of π_old
    td["action"], td["action_log_prob"] = act, old_log_prob  # sb3's own sampled actions and log-probs
    td["advantage"], td["value_target"] = adv.unsqueeze(-1), torch.zeros(obs.shape[0], 1)
    loss = TRPOLoss(actor, critic, normalize_advantage=config.normalize_advantage, kl_reduction=kl_reduction)
    update = TrustRegionUpdate(loss, **config.trust_region_kwargs())
    theta_old = update.flat_parameters()
    metrics = update(td)
    return theta_old, update.flat_parameters(), metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--iters", type=int, default=3, help="sb3-contrib batches to compare on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)
    if not sb3_available():
        print("parity.py needs sb3-contrib: pip install --no-build-isolation -e '.[bench]'")
        return 2
    torch.set_num_threads(args.threads)
    config = our_config(args.env, seed=args.seed, total_frames=args.iters * 10**6)
    model = sb3_trpo(config)
    if type(model.policy.action_dist).__name__ != "DiagGaussianDistribution":
        print(f"parity.py compares Gaussian policies; {args.env}'s is {type(model.policy.action_dist).__name__}")
        return 2
    _, callback = model._setup_learn(args.iters * config.frames_per_batch, None)
    callback.on_training_start(locals(), globals())
    rows, records = [], []
    for it in range(args.iters):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        buf = model.rollout_buffer
        obs_dim, act_dim = buf.observations.shape[-1], buf.actions.shape[-1]
        batch = (
            torch.as_tensor(buf.observations.reshape(-1, obs_dim), dtype=torch.float32),
            torch.as_tensor(buf.actions.reshape(-1, act_dim), dtype=torch.float32),
            torch.as_tensor(buf.log_probs.reshape(-1), dtype=torch.float32),
            torch.as_tensor(buf.advantages.reshape(-1), dtype=torch.float32),
        )
        ours = {r: our_step(model.policy, batch, config, r) for r in ("mean", "sum")}
        theta_old = sb3_actor_theta(model.policy)
        model.train()
        theta_sb3 = sb3_actor_theta(model.policy)
        sb3_step = (theta_sb3 - theta_old).norm()
        for reduction, (_, theta, metrics) in ours.items():
            step = (theta - theta_old).norm()
            rec = {
                "batch": it,
                "kl_reduction": reduction,
                "relative_difference": float((theta_sb3 - theta).norm() / step.clamp_min(1e-30)),
                "step_length_ratio_sb3_over_ours": float(sb3_step / step.clamp_min(1e-30)),
                "our_log_std_step": (theta - theta_old)[-act_dim:].tolist(),
                "sb3_log_std_step": (theta_sb3 - theta_old)[-act_dim:].tolist(),
                "our_kl": float(metrics["kl"]),
                "accepted": bool(metrics["step_accepted"]),
            }
            records.append(rec)
            rows.append(
                [
                    it,
                    reduction,
                    f"{rec['relative_difference']:.1e}",
                    f"{rec['step_length_ratio_sb3_over_ours']:.3f}",
                    f"{rec['our_kl']:.4f}",
                    " ".join(f"{v:+.3f}" for v in rec["our_log_std_step"]),
                    " ".join(f"{v:+.3f}" for v in rec["sb3_log_std_step"]),
                ]
            )
    header = [
        "batch",
        "kl_reduction",
        "|θ_sb3−θ_ours|/|step|",
        "|step_sb3|/|step_ours|",
        "our KL",
        "our Δlog σ",
        "sb3 Δlog σ",
    ]
    print(
        f"\n{args.env}, seed {args.seed}, rl-zoo3 preset (max KL {config.max_kl}, damping {config.damping}, CG {config.cg_iters})"
    )
    print(markdown_table(header, rows))
    write_json(
        args.out,
        {"machine": machine(), "env": args.env, "seed": args.seed, "config": config.to_dict(), "results": records},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
