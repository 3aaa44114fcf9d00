"""How long does one full TRPO iteration (advantages, actor step, critic fit) take, ours against
sb3-contrib's TRPO, at the same batch size and hyperparameters?

Setting: rl-zoo3's TRPO preset for HalfCheetah (2 envs x 1024 steps = 2048 states, CG 25 iterations,
damping 0.1, target KL 0.04, line search 10 x 0.8, critic 20 epochs x minibatch 128, Adam lr 1e-3,
64x64 tanh actor and critic). One batch is collected from the real environment by each library,
then the same iteration is timed again and again on it, ours and the peer's interleaved in one
process so that machine load hits both alike:

  * ours:  FusedGAE (``loss.value_estimator``), ``TrustRegionUpdate`` (gradient, Gauss-Newton FVP,
           CG, step scaling, batched line search), ``CriticFit`` -- timed per phase.
  * peer:  ``rollout_buffer.compute_returns_and_advantage`` (its GAE) + ``TRPO.train()`` of
           sb3-contrib (actor step and critic epochs).

Before each repetition both sides get back the parameters and optimiser state they had after
collection, so every repetition is the same first iteration (a peer whose line search ran on a stale
batch would backtrack more, which is not what we want to time). Warm-up repetitions are excluded.
The peer is skipped when sb3_contrib is not importable (e.g. on the GPU machine).

``--modules`` adds the same networks built from TorchRL's standard modules, as a TorchRL user writes
them, with the loss, update and critic fit built on them by hand with the preset's settings:

  * torchrl:     a ``ValueOperator(MLP)`` critic and ``MLP`` + ``AddStateIndependentNormalScale`` actor
                 (a state-independent scale, like ours), against ours;
  * torchrl-nsd: the actor's scale from the network through ``NormalParamExtractor`` (state-dependent),
                 against the same network built with our factory (``gaussian_actor(...,
                 state_dependent_scale=True)``, row ``ours-nsd``).

They start from our networks' weights (the scale rows of a state-dependent head at zero, a scale of 1,
as ours starts) and time the iteration on the same batch, its observations normalised as our networks'
first module does and its log-probabilities those of each side's own actor.

    python benchmarks/update.py                       # 15 interleaved repetitions, CPU
    python benchmarks/update.py --quick               # 3 repetitions
    python benchmarks/update.py --device cuda         # ours on the GPU (the peer stays on CPU)
    python benchmarks/update.py --out bench_out/update.json
    python benchmarks/update.py --modules torchrl      # + TorchRL's modules (state-independent scale)
    python benchmarks/update.py --modules all          # ours, torchrl, ours-nsd, torchrl-nsd, sb3-contrib
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Stopwatch, machine, median, our_config, sb3_available, sb3_trpo, write_json  # noqa: E402


def time_iteration(loss, actor_step, critic_fit, batch, cuda: bool) -> dict[str, float]:
    """One iteration of ours on ``batch``, timed per phase: GAE, the actor step, the critic fit."""
    gae, actor, critic = Stopwatch(cuda), Stopwatch(cuda), Stopwatch(cuda)
    with gae, torch.no_grad():
        loss.value_estimator(batch)
    with actor:
        metrics = actor_step(batch)
    with critic:
        critic_fit(batch)
    return {
        "gae_s": gae.seconds,
        "actor_s": actor.seconds,
        "critic_s": critic.seconds,
        "total_s": gae.seconds + actor.seconds + critic.seconds,
        "accepted": bool(metrics["step_accepted"]),
        "backtracks": int(metrics["backtrack_steps"]),
        "kl": float(metrics["kl"]),
    }


class Ours:
    """Our iteration from the training app's own objects (Trainer), on one collected batch."""

    def __init__(self, config, run_dir: Path):
        from trpo_torchrl.app.train import Trainer

        self.trainer = Trainer(config, run_dir=run_dir)
        self.cuda = self.trainer.device.type == "cuda"
        self.batch = self.trainer.next_batch()
        self.trainer.shutdown()
        self.state = copy.deepcopy(
            {
                "actor": self.trainer.actor.state_dict(),
                "critic": self.trainer.critic.state_dict(),
                "optim": self.trainer.critic_fit.optimizer.state_dict(),
            }
        )

    def reset(self):
        t = self.trainer
        t.actor.load_state_dict(self.state["actor"])
        t.critic.load_state_dict(self.state["critic"])
        t.critic_fit.optimizer.load_state_dict(copy.deepcopy(self.state["optim"]))
        return self.batch.clone()

    def run(self) -> dict[str, float]:
        t = self.trainer
        return time_iteration(t.loss, t.actor_step, t.critic_fit, self.reset(), self.cuda)


class Built:
    """One iteration of TRPO built by hand, as a user of the library would, on ``actor`` and
    ``critic`` with ``config``'s settings, on a copy of ``batch`` whose observations ``normalize``
    maps as our networks' first module does."""

    def __init__(self, config, batch, normalize, actor, critic, device):
        from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate

        self.cuda = device.type == "cuda"
        self.actor, self.critic = actor.to(device), critic.to(device)
        self.loss = TRPOLoss(
            actor,
            critic,
            entropy_coeff=config.entropy_coeff,
            normalize_advantage=config.normalize_advantage,
            kl_reduction=config.kl_reduction,
        ).make_value_estimator(gamma=config.gamma, lmbda=config.gae_lambda)
        seed = config.seed
        self.actor_step = TrustRegionUpdate(
            self.loss,
            **config.trust_region_kwargs(),
            generator=torch.Generator(device=device).manual_seed(seed + 1),
        )
        self.critic_fit = CriticFit(
            self.loss,
            lr=config.critic_lr,
            eps=config.critic_eps,
            epochs=config.critic_epochs,
            minibatch_size=config.critic_minibatch,
            generator=torch.Generator().manual_seed(seed + 2),
        )
        batch = batch.clone()
        with torch.no_grad():
            for key in ("observation", ("next", "observation")):
                batch[key] = normalize(batch[key])
            # π_old as this side's actor gives it (the same policy as ours, up to rounding)
            dist = actor.get_dist(batch)
            batch[self.loss.tensor_keys.sample_log_prob] = dist.log_prob(batch["action"])
        self.batch = batch
        self.state = copy.deepcopy(
            {
                "actor": actor.state_dict(),
                "critic": critic.state_dict(),
                "optim": self.critic_fit.optimizer.state_dict(),
            }
        )

    def reset(self):
        self.actor.load_state_dict(self.state["actor"])
        self.critic.load_state_dict(self.state["critic"])
        self.critic_fit.optimizer.load_state_dict(copy.deepcopy(self.state["optim"]))
        return self.batch.clone()

    def run(self) -> dict[str, float]:
        return time_iteration(self.loss, self.actor_step, self.critic_fit, self.reset(), self.cuda)


def linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


@torch.no_grad()
def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """``target``'s Linear layers take ``source``'s, in order; a wider last layer (a state-dependent
    head: loc rows, then scale rows) keeps zeros in its extra rows."""
    src, dst = linears(source), linears(target)
    assert len(src) == len(dst), (source, target)
    for a, b in zip(src, dst):
        b.weight.zero_()
        b.bias.zero_()
        b.weight[: a.out_features].copy_(a.weight)
        b.bias[: a.out_features].copy_(a.bias)


def module_sides(ours: Ours, kinds: list[str]) -> dict[str, Built]:
    """The sides built from TorchRL's modules (and ``ours-nsd`` from our factory) on ours' batch."""
    from tensordict.nn import AddStateIndependentNormalScale, NormalParamExtractor, TensorDictModule
    from torchrl.envs import ExplorationType
    from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator

    from trpo_torchrl import gaussian_actor
    from trpo_torchrl.app.models import mlp
    from trpo_torchrl.policies import StateIndependentScale

    t, config = ours.trainer, ours.trainer.config
    obs_dim = ours.batch["observation"].shape[-1]
    action_dim = ours.batch["action"].shape[-1]
    hidden = list(config.hidden_sizes)
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[config.activation]
    (log_std,) = [m.log_std for m in t.actor.modules() if isinstance(m, StateIndependentScale)]

    def torchrl_mlp(out: int) -> torch.nn.Module:
        return MLP(in_features=obs_dim, out_features=out, num_cells=hidden, activation_class=activation)

    def torchrl_actor(net: torch.nn.Module) -> ProbabilisticActor:
        return ProbabilisticActor(
            TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
            in_keys=["loc", "scale"],
            distribution_class=IndependentNormal,
            return_log_prob=True,
            default_interaction_type=ExplorationType.RANDOM,
        )

    def critic(kind: str) -> torch.nn.Module:
        if kind.startswith("torchrl"):
            net = torchrl_mlp(1)
            copy_weights(t.critic, net)
            return ValueOperator(net, in_keys=["observation"])
        net = mlp(obs_dim, 1, tuple(hidden), config.activation, out_gain=1.0)
        copy_weights(t.critic, net)
        return TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"])

    def actor(kind: str) -> torch.nn.Module:
        if kind == "torchrl":
            net = torchrl_mlp(action_dim)
            copy_weights(t.actor, net)
            scale = AddStateIndependentNormalScale(action_dim, scale_mapping="exp")
            with torch.no_grad():
                scale.state_independent_scale.copy_(log_std)  # exp mapping: the same log-std
            return torchrl_actor(torch.nn.Sequential(net, scale))
        if kind == "torchrl-nsd":
            net = torchrl_mlp(2 * action_dim)
            copy_weights(t.actor, net)
            return torchrl_actor(torch.nn.Sequential(net, NormalParamExtractor()))
        # ours-nsd: the same state-dependent network from our factory
        net = mlp(obs_dim, 2 * action_dim, tuple(hidden), config.activation, out_gain=0.01)
        copy_weights(t.actor, net)
        return gaussian_actor(net, action_dim, state_dependent_scale=True)

    return {kind: Built(config, ours.batch, t.normalizer, actor(kind), critic(kind), t.device) for kind in kinds}


class Peer:
    """sb3-contrib's iteration on a rollout it collected itself with the same hyperparameters."""

    def __init__(self, config):
        from stable_baselines3.common.utils import obs_as_tensor

        self.model = sb3_trpo(config.__class__(**{**config.__dict__, "device": "cpu"}))
        m = self.model
        _, callback = m._setup_learn(m.n_steps * m.n_envs, callback=None)
        m.collect_rollouts(m.env, callback, m.rollout_buffer, n_rollout_steps=m.n_steps)
        with torch.no_grad():
            self.last_values = m.policy.predict_values(obs_as_tensor(m._last_obs, m.device))
        self.dones = m._last_episode_starts.copy()
        self.buffer = copy.deepcopy(m.rollout_buffer)
        self.state = copy.deepcopy({"policy": m.policy.state_dict(), "optim": m.policy.optimizer.state_dict()})

    def run(self) -> dict[str, float]:
        m = self.model
        m.policy.load_state_dict(self.state["policy"])
        m.policy.optimizer.load_state_dict(copy.deepcopy(self.state["optim"]))
        m.rollout_buffer = copy.deepcopy(self.buffer)  # train() flattens the buffer in place
        buffer = m.rollout_buffer
        gae, train = Stopwatch(), Stopwatch()
        # train() reads the whole batch once for the actor step (get(None)), then minibatches for
        # the critic epochs (get(batch_size)): the first minibatch read marks the phase boundary
        critic_start = []
        get = buffer.get

        def marked_get(batch_size=None):
            if batch_size is not None and not critic_start:
                critic_start.append(time.perf_counter())
            return get(batch_size)

        buffer.get = marked_get
        with gae:
            buffer.compute_returns_and_advantage(last_values=self.last_values, dones=self.dones)
        with train:
            m.train()
        t_end = time.perf_counter()
        critic_s = t_end - critic_start[0] if critic_start else float("nan")
        return {
            "gae_s": gae.seconds,
            "actor_s": train.seconds - critic_s,
            "critic_s": critic_s,
            "train_s": train.seconds,
            "total_s": gae.seconds + train.seconds,
        }


def print_row(name: str, med: dict[str, float], note: str = "") -> None:
    print(
        f"{name:12} {med['gae_s'] * 1e3:>8.2f} {med['actor_s'] * 1e3:>9.1f} "
        f"{med['critic_s'] * 1e3:>10.1f} {med['total_s'] * 1e3:>9.1f}{note}"
    )


def summarize(rows: list[dict], keys: list[str]) -> dict[str, float]:
    return {k: median([r[k] for r in rows]) for k in keys}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5", help="task whose rl-zoo3 preset is used")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per side (after 2 warm-ups)")
    ap.add_argument("--quick", action="store_true", help="3 repetitions")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (2 x 64 steps, 2 critic epochs): smoke test only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where our update runs")
    ap.add_argument("--no-peer", action="store_true", help="leave sb3-contrib out")
    ap.add_argument(
        "--modules",
        default="ours",
        choices=["ours", "torchrl", "torchrl-nsd", "all"],
        help="networks: ours (our factories, the app's), torchrl (+ TorchRL's ValueOperator(MLP) and MLP + "
        "AddStateIndependentNormalScale), torchrl-nsd (+ MLP + NormalParamExtractor, and ours-nsd: the same "
        "network from our factory), all",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for both sides (default 1: small networks, shared cores)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 3 if args.quick else args.reps
    warmup = 2
    overrides = {"seed": args.seed, "device": args.device}
    if args.tiny:
        reps, warmup = 2, 1
        overrides.update(steps_per_env=64, critic_epochs=2, critic_minibatch=32, cg_iters=5)
    config = our_config(args.env, **overrides)
    with_peer = sb3_available() and not args.no_peer
    if not with_peer and not args.no_peer:
        print("sb3_contrib is not importable: timing ours only (pip install '.[bench]' for the peer)")

    with tempfile.TemporaryDirectory() as tmp:
        ours = Ours(config, Path(tmp))
        kinds = {
            "ours": [],
            "torchrl": ["torchrl"],
            "torchrl-nsd": ["ours-nsd", "torchrl-nsd"],
            "all": ["torchrl", "ours-nsd", "torchrl-nsd"],
        }[args.modules]
        sides = module_sides(ours, kinds)
        peer = Peer(config) if with_peer else None
        ours_rows, peer_rows = [], []
        side_rows = {kind: [] for kind in sides}
        for i in range(warmup + reps):
            o = ours.run()
            s = {kind: side.run() for kind, side in sides.items()}
            p = peer.run() if peer else None
            if i >= warmup:
                ours_rows.append(o)
                for kind, row in s.items():
                    side_rows[kind].append(row)
                if p:
                    peer_rows.append(p)

    ours_med = summarize(ours_rows, ["gae_s", "actor_s", "critic_s", "total_s"])
    result = {
        "benchmark": "update",
        "machine": machine(),
        "config": config.to_dict(),
        "states_per_batch": config.frames_per_batch,
        "repetitions": reps,
        "ours": ours_med,
        "ours_rows": ours_rows,
    }
    print(
        f"one TRPO iteration, {args.env} preset: {config.num_envs} envs x {config.steps_per_env} steps, "
        f"cg {config.cg_iters}, damping {config.damping}, critic {config.critic_epochs} x {config.critic_minibatch}, "
        f"max_kl {config.max_kl}; median of {reps} (ours on {args.device})"
    )
    print(f"{'':12} {'GAE ms':>8} {'actor ms':>9} {'critic ms':>10} {'total ms':>9}")
    print_row("ours", ours_med)
    # TorchRL's modules against the same network from our factories, paired per repetition
    baseline = {"torchrl": ours_rows, "ours-nsd": ours_rows, "torchrl-nsd": side_rows.get("ours-nsd")}
    for kind, rows in side_rows.items():
        med = summarize(rows, ["gae_s", "actor_s", "critic_s", "total_s"])
        against = "ours" if baseline[kind] is ours_rows else "ours-nsd"
        ratios = [r["total_s"] / b["total_s"] for r, b in zip(rows, baseline[kind])]
        result[kind] = {**med, "rows": rows, "vs": against, "ratio_median": median(ratios)}
        print_row(kind, med, f"  {median(ratios):.2f}x {against} (median of paired ratios)")
    if peer_rows:
        peer_med = summarize(peer_rows, ["gae_s", "actor_s", "critic_s", "train_s", "total_s"])
        # per-repetition ratios: both sides of a pair ran back to back under the same load
        ratios = [p["total_s"] / o["total_s"] for o, p in zip(ours_rows, peer_rows)]
        result.update(
            peer=peer_med,
            peer_rows=peer_rows,
            speedup_median=median(ratios),
            speedup_of_medians=peer_med["total_s"] / ours_med["total_s"],
        )
        print_row("sb3-contrib", peer_med)
        print(
            f"{'sb3 / ours':12} {peer_med['gae_s'] / ours_med['gae_s']:>8.2f} {peer_med['actor_s'] / ours_med['actor_s']:>9.2f} "
            f"{peer_med['critic_s'] / ours_med['critic_s']:>10.2f} {peer_med['total_s'] / ours_med['total_s']:>9.2f}"
        )
        print(
            f"speedup (sb3-contrib / ours): {result['speedup_of_medians']:.2f}x of medians, "
            f"{result['speedup_median']:.2f}x median of paired ratios"
        )
    print(machine())
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
