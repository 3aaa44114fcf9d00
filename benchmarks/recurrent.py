"""What does a recurrent policy cost the actor step? One TrustRegionUpdate on the same CartPoleNoVel-v1
batch with an LSTM, a GRU and a feed-forward (MLP) policy.

    OMP_NUM_THREADS=1 python benchmarks/recurrent.py --threads 1 --out recurrent.json

The batch (``--envs`` rows of ``--steps`` steps) is collected once with TorchRL's Collector and the
LSTM policy; the GRU and MLP policies read the same observations and actions, with π_old recomputed
as each policy (so each starts at its own θ_old). Each update is timed from the same θ_old (the
parameters are restored between repeats); the median is reported, the first call left out as warm-up.
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import torch
from _common import machine, markdown_table, median, write_json
from gymnasium.vector import AutoresetMode
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.envs import GymWrapper, InitTracker, TransformedEnv
from torchrl.modules import MLP, GRUModule, LSTMModule, ProbabilisticActor, ValueOperator, set_recurrent_mode

import trpo_torchrl  # noqa: F401  (registers CartPoleNoVel-v1)
from trpo_torchrl import TRPOLoss, TrustRegionUpdate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8, help="batch rows (environments)")
    parser.add_argument("--steps", type=int, default=128, help="steps per row")
    parser.add_argument("--hidden", type=int, default=64, help="recurrent state size / MLP width")
    parser.add_argument("--reps", type=int, default=5, help="timed updates per policy (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def actor_over(body: nn.Module | TensorDictSequential, hidden: int) -> ProbabilisticActor:
    head = TensorDictModule(nn.Linear(hidden, 2), in_keys=["features"], out_keys=["logits"])
    return ProbabilisticActor(
        TensorDictSequential(body, head),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=Categorical,
        return_log_prob=True,
    )


def policies(hidden: int) -> dict[str, ProbabilisticActor]:
    torch.manual_seed(0)
    rnn_kwargs = {"input_size": 2, "hidden_size": hidden, "in_key": "observation", "out_key": "features"}
    mlp = TensorDictModule(
        nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()),
        in_keys=["observation"],
        out_keys=["features"],
    )
    return {
        "lstm": actor_over(LSTMModule(**rnn_kwargs), hidden),
        "gru": actor_over(GRUModule(**rnn_kwargs), hidden),
        "mlp": actor_over(mlp, hidden),
    }


def collect(actor, envs: int, steps: int):
    vec = gymnasium.make_vec(
        "CartPoleNoVel-v1", envs, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}
    )
    env = TransformedEnv(GymWrapper(vec, categorical_action_encoding=True), InitTracker())
    for module in actor.modules():
        if isinstance(module, (LSTMModule, GRUModule)):
            env.append_transform(module.make_tensordict_primer())
    env.set_seed(0)
    collector = Collector(env, actor, frames_per_batch=envs * steps, total_frames=2 * envs * steps)
    batch = list(collector)[-1]  # rows that start mid-episode
    collector.shutdown()
    return batch


def as_policy(actor, batch, primer_from):
    """The batch with π_old recomputed as ``actor`` (the same observations and actions); a GRU also
    gets its own stored states, from a replay of the LSTM-collected sequences."""
    data = batch.clone()
    with torch.no_grad(), set_recurrent_mode(True):
        for module in actor.modules():
            if isinstance(module, GRUModule):
                data[module.in_keys[1]] = torch.zeros_like(batch[primer_from.in_keys[1]])
        out = actor.get_dist_params(data.select(*actor.in_keys).clone())
    data["logits"] = out["logits"]
    data["action_log_prob"] = Categorical(logits=out["logits"]).log_prob(data["action"])
    return data


def time_update(actor, batch, reps: int) -> float:
    critic = ValueOperator(MLP(in_features=2, out_features=1, num_cells=[64, 64]), in_keys=["observation"])
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=0.99, lmbda=0.95)
    loss.value_estimator(batch)
    update = TrustRegionUpdate(loss, max_kl=0.01)
    theta = update.flat_parameters().clone()
    times = []
    for _ in range(reps + 1):
        update.write_parameters(theta)
        start = time.perf_counter()
        update(batch)
        times.append(time.perf_counter() - start)
    update.write_parameters(theta)
    return median(times[1:])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.tiny:
        args.envs, args.steps, args.hidden, args.reps = 2, 16, 8, 1
    torch.set_num_threads(args.threads)
    actors = policies(args.hidden)
    batch = collect(actors["lstm"], args.envs, args.steps)
    lstm = next(m for m in actors["lstm"].modules() if isinstance(m, LSTMModule))
    rows, result = [], {"machine": machine(), "envs": args.envs, "steps": args.steps, "hidden": args.hidden}
    for name, actor in actors.items():
        data = batch if name == "lstm" else as_policy(actor, batch, lstm)
        seconds = time_update(actor, data, args.reps)
        result[name] = {"update_s": seconds}
        rows.append([name, f"{seconds * 1e3:.0f}"])
    for name in ("lstm", "gru"):
        result[name]["vs_mlp"] = result[name]["update_s"] / result["mlp"]["update_s"]
    print(f"one TrustRegionUpdate, batch [{args.envs}, {args.steps}] of CartPoleNoVel-v1, hidden {args.hidden}")
    print(markdown_table(["policy", "update (ms, median)"], rows))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
