"""What a seed population is for: M independent TRPO runs on a simulator that runs on the device.

VMAS's navigation scenario (one agent per environment) is simulated by torch, on the GPU when
there is one. Member m owns E environments of one ``VmasEnv`` of M × E, its own policy (a 64×64
tanh Gaussian MLP), its own critic and critic optimiser. One iteration of the population:

  * collection: T steps, each one ``population_policy`` call acting for every member (their stacked
    parameters, vmapped) and one VMAS step moving all M × E environments;
  * advantages: each member's GAE with its own critic (``TRPOLoss.value_estimator``);
  * actor step: one ``PopulationTrustRegionUpdate`` for every member's trust-region step;
  * critic fits: ``fit_critics``, every member's critic in one call of the fused op.

For each M it times ``--iterations`` iterations after one warm-up (CUDA synchronised before each
clock read) and prints seconds per iteration, per phase, and against M = 1. Running the M members
one after another would cost M times the M = 1 row; the issue's point is that on a GPU, where one
member leaves the device idle, 64 members cost a few times one. It runs on the CPU too (slower, and
there the members' work adds up).

Usage: python benchmarks/population_vmas.py [--device cpu|cuda] [--members 1,4,16,64] [--envs 32]
                                            [--steps 100] [--iterations 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

from trpo_torchrl import CriticFit, PopulationTrustRegionUpdate, TRPOLoss, fit_critics, gaussian_actor  # noqa: E402
from trpo_torchrl.population import population_policy  # noqa: E402

PHASES = ("collect", "advantages", "actor", "critic")


class Population:
    """M members on one VMAS env of M × E environments: stacked actors, one critic each."""

    def __init__(self, members: int, envs: int, steps: int, device: torch.device, seed: int = 0):
        from tensordict.nn import TensorDictModule
        from torchrl.envs.libs.vmas import VmasEnv
        from torchrl.modules import MLP

        torch.manual_seed(seed)
        self.members, self.envs, self.steps, self.device = members, envs, steps, device
        self.env = VmasEnv(
            "navigation",
            num_envs=members * envs,
            n_agents=1,
            continuous_actions=True,
            max_steps=steps,
            seed=seed,
            device=device,
            clamp_actions=True,
        )
        self.obs_dim = self.env.observation_spec["agents", "observation"].shape[-1]
        self.act_dim = self.env.full_action_spec[self.env.action_key].shape[-1]
        mlp = dict(depth=2, num_cells=64, activation_class=nn.Tanh)
        actors = [
            gaussian_actor(MLP(in_features=self.obs_dim, out_features=self.act_dim, **mlp), self.act_dim).to(device)
            for _ in range(members)
        ]
        self.params = TensorDict.from_modules(*actors, as_module=True)
        self.policy = population_policy(actors[0], self.params)
        self.losses = []
        for actor in actors:
            critic = TensorDictModule(
                MLP(in_features=self.obs_dim, out_features=1, **mlp), in_keys=["observation"], out_keys=["state_value"]
            ).to(device)
            self.losses.append(TRPOLoss(actor, critic).make_value_estimator(gamma=0.99, lmbda=0.95))
        self.update = PopulationTrustRegionUpdate(self.losses[0], self.params, max_kl=0.01, cg_iters=10)
        self.fits = [CriticFit(loss, lr=1e-3, epochs=5, minibatch_size=envs * steps // 4) for loss in self.losses]
        self.td = self.env.reset()

    @torch.no_grad()
    def collect(self) -> TensorDict:
        """T steps of every member: the batch ``[M, E, T]``."""
        m, e, f = self.members, self.envs, self.obs_dim
        rows = []
        td = self.td
        for _ in range(self.steps):
            obs = td.get(("agents", "observation")).reshape(m, e, f)
            out = self.policy(TensorDict({"observation": obs}, [m, e], device=self.device))
            td.set(("agents", "action"), out.get("action").reshape(m * e, 1, self.act_dim))
            td, following = self.env.step_and_maybe_reset(td)
            nxt = td.get("next")
            out.set(
                "next",
                TensorDict(
                    {
                        "observation": nxt.get(("agents", "observation")).reshape(m, e, f),
                        "reward": nxt.get(("agents", "reward")).reshape(m, e, 1),
                        "done": nxt.get("done").reshape(m, e, 1),
                        "terminated": nxt.get("terminated").reshape(m, e, 1),
                    },
                    [m, e],
                ),
            )
            rows.append(out)
            td = following
        self.td = td
        return torch.stack(rows, dim=2)

    def iteration(self) -> tuple[dict[str, float], float]:
        """One iteration; the seconds of each phase and the members' mean reward per step."""
        seconds = {}

        def clock():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter()

        t0 = clock()
        batch = self.collect()
        t1 = clock()
        with torch.no_grad():
            members = [loss.value_estimator(batch[k]) for k, loss in enumerate(self.losses)]
        batch = torch.stack(members)
        t2 = clock()
        self.update(batch)
        t3 = clock()
        fit_critics(self.fits, [batch[k] for k in range(self.members)])
        t4 = clock()
        for phase, (a, b) in zip(PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
            seconds[phase] = b - a
        return seconds, batch.get(("next", "reward")).mean().item()


def bench(device: torch.device, members_list, envs: int, steps: int, iterations: int) -> list[dict]:
    rows = []
    base = None
    print(f"\nVMAS navigation on {device}: {envs} environments × {steps} steps per member per iteration")
    print(f"{'M':>4} {'s/iteration':>12} {'vs M=1':>7} " + " ".join(f"{p:>11}" for p in PHASES) + f" {'reward':>8}")
    for members in members_list:
        population = Population(members, envs, steps, device)
        population.iteration()  # warm-up: kernels, allocator, the fused op's first call
        runs = [population.iteration() for _ in range(iterations)]
        phases = {p: sum(r[0][p] for r in runs) / iterations for p in PHASES}
        total = sum(phases.values())
        base = base or total
        reward = runs[-1][1]
        rows.append(
            dict(
                device=str(device),
                members=members,
                envs_per_member=envs,
                steps=steps,
                seconds_per_iteration=total,
                phases=phases,
                over_m1=total / base,
                mean_reward_last_iteration=reward,
            )
        )
        print(
            f"{members:>4} {total:>12.3f} {total / base:>6.2f}x "
            + " ".join(f"{phases[p]:>11.3f}" for p in PHASES)
            + f" {reward:>8.4f}",
            flush=True,
        )
        population.env.close()
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--members", default="1,4,16,64", help="comma-separated population sizes")
    ap.add_argument("--envs", type=int, default=32, help="VMAS environments per member")
    ap.add_argument("--steps", type=int, default=100, help="steps per environment per iteration (= episode length)")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per M (after one warm-up)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    info = machine()
    print("machine:", json.dumps(info))
    rows = bench(device, [int(m) for m in args.members.split(",")], args.envs, args.steps, args.iterations)
    write_json(args.out, dict(machine=info, vmas=rows))
    return rows


if __name__ == "__main__":
    main()
