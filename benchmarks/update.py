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

    python benchmarks/update.py                       # 15 interleaved repetitions, CPU
    python benchmarks/update.py --quick               # 3 repetitions
    python benchmarks/update.py --device cuda         # ours on the GPU (the peer stays on CPU)
    python benchmarks/update.py --out bench_out/update.json
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
        batch = self.reset()
        gae, actor, critic = Stopwatch(self.cuda), Stopwatch(self.cuda), Stopwatch(self.cuda)
        with gae, torch.no_grad():
            t.loss.value_estimator(batch)
        with actor:
            metrics = t.actor_step(batch)
        with critic:
            t.critic_fit(batch)
        return {
            "gae_s": gae.seconds,
            "actor_s": actor.seconds,
            "critic_s": critic.seconds,
            "total_s": gae.seconds + actor.seconds + critic.seconds,
            "accepted": bool(metrics["step_accepted"]),
            "backtracks": int(metrics["backtrack_steps"]),
        }


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


def summarize(rows: list[dict], keys: list[str]) -> dict[str, float]:
    return {k: median([r[k] for r in rows]) for k in keys}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5", help="task whose rl-zoo3 preset is used")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per side (after 2 warm-ups)")
    ap.add_argument("--quick", action="store_true", help="3 repetitions")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (2 x 64 steps, 2 critic epochs): smoke test only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where our update runs")
    ap.add_argument("--no-peer", action="store_true", help="time ours only")
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
        peer = Peer(config) if with_peer else None
        ours_rows, peer_rows = [], []
        for i in range(warmup + reps):
            o = ours.run()
            p = peer.run() if peer else None
            if i >= warmup:
                ours_rows.append(o)
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
    print(f"{'':10} {'GAE ms':>8} {'actor ms':>9} {'critic ms':>10} {'total ms':>9}")
    print(
        f"{'ours':10} {ours_med['gae_s'] * 1e3:>8.2f} {ours_med['actor_s'] * 1e3:>9.1f} "
        f"{ours_med['critic_s'] * 1e3:>10.1f} {ours_med['total_s'] * 1e3:>9.1f}"
    )
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
        print(
            f"{'sb3-contrib':10} {peer_med['gae_s'] * 1e3:>8.2f} {peer_med['actor_s'] * 1e3:>9.1f} "
            f"{peer_med['critic_s'] * 1e3:>10.1f} {peer_med['total_s'] * 1e3:>9.1f}"
        )
        print(
            f"{'ratio':10} {peer_med['gae_s'] / ours_med['gae_s']:>8.2f} {peer_med['actor_s'] / ours_med['actor_s']:>9.2f} "
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
