"""``train --seeds M`` on several cores: the members split into P slices, each slice trained by a
forked process as its own population.

One process runs its members' simulators, policies and updates on one core: gymnasium's steps hold
the GIL between MuJoCo's, and a thread pool's hand-offs cost more than the second core gives back
(docs/population.md). So, with ``member_processes`` P > 1, the members ``0..M-1`` are cut into P
contiguous slices of at least two members and each is a :class:`~trpo_torchrl.app.population.PopulationTrainer` of its own
in a process forked from this one (after the imports, so they are paid once). A member's
arithmetic does not depend on which other members share its population, so member m's results are
bit for bit those of the one-process population (tested), and its run directory, checkpoints and
``--resume`` are the same. Not for a population of one: a batched product over one member can take
another kernel (``bmm`` of a one-column result), which rounds differently; hence two or more.

The slices meet at every iteration boundary: each reports the signal it received (if any) and
waits for the parent's word, so they all go on, or all stop there with checkpoints (SIGTERM or a
Ctrl-C, whether it reached the parent or the slices), and the group resumes from one iteration. A
second Ctrl-C in the terminal reaches the slices directly and stops them at once, as in one process.
A slice that fails or ends early stops the others at their next boundary, and its error is raised
here. The parent writes the group's ``config.yaml``, prints one progress line per iteration from the
slices' rows, and plots the group when all are done. Only progress rows, stop decisions, results and
errors travel between the processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from .config import ConfigError, TrainConfig, save_yaml
from .errors import AppError
from .train import StopRequest

__all__ = ["MemberProcessError", "member_slices", "resolve_member_processes", "train_in_processes"]


class MemberProcessError(RuntimeError):
    """A process training a slice of the members failed (its traceback is in the message) or died."""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_member_processes(config: TrainConfig) -> int:
    """How many processes train ``config``'s members: ``member_processes`` when given, else one per
    core (at most M / 2: every slice holds two members or more) for the ``direct`` collector on the
    CPU without environment workers, else 1. Under ``torchrun`` (learner ranks) the members stay in
    each rank's process."""
    if config.seeds == 1 or config.member_processes == 1:
        return 1
    forks = "fork" in multiprocessing.get_all_start_methods()
    ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.member_processes > 1:
        if ranks:
            raise ConfigError(
                f"config: member_processes={config.member_processes} under torchrun: each learner rank trains "
                "its members in its own process (member_processes 0 or 1)"
            )
        if not forks:
            raise ConfigError(
                f"config: member_processes={config.member_processes} needs the 'fork' start method "
                "(Linux, macOS); use member_processes 1"
            )
        return config.member_processes
    if ranks or not forks or config.collector != "direct" or config.device != "cpu" or config.env_workers:
        return 1
    return max(1, min(_cores(), config.seeds // 2))


def member_slices(members: int, processes: int) -> list[range]:
    """``range(members)`` cut into ``processes`` contiguous slices whose sizes differ by at most one."""
    bounds = [members * j // processes for j in range(processes + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass
class _Slice:
    """What one process trains: members ``members`` of the group, anew or resumed."""

    config: TrainConfig
    group_dir: Path
    members: range
    resume: tuple | None  # (the --resume overrides, trust, group_checkpoints' result), or a new run

    def trainer(self):
        from .population import PopulationTrainer, resume_population

        if self.resume is None:
            return PopulationTrainer(self.config, group_dir=self.group_dir, member_range=self.members)
        overrides, trust, checked = self.resume
        return resume_population(self.group_dir, overrides, trust=trust, member_range=self.members, checked=checked)


def _train_slice(conn, job: _Slice) -> None:
    """A slice's process: trains its members, reporting each iteration's rows and meeting the other
    slices at each iteration boundary (through the parent), then sends its results."""
    # from the start, a first SIGINT or SIGTERM (a Ctrl-C, or SIGTERM to the whole group while the
    # slice is still being built) asks for a stop at the first boundary, as once training; a signal
    # the process ignores stays ignored, and a second Ctrl-C stops at once
    early = StopRequest()
    early.__enter__()
    try:
        trainer = job.trainer()

        def report(iteration, total, rows):
            conn.send(("rows", iteration, total, [(r["train_return"], r["step_accepted"]) for r in rows]))

        def at_boundary(signum):
            conn.send(("boundary", signum or early.signum))
            return conn.recv()  # the signal that stops every slice here, or 0

        trainer.on_iteration = report
        trainer.at_boundary = at_boundary
        conn.send(("done", trainer.train()))
    except KeyboardInterrupt:  # before the run's own handlers were installed: nothing to checkpoint yet
        conn.send(("error", "interrupted before training started"))
    except AppError as err:
        conn.send(("app_error", err))
    except BaseException:  # noqa: BLE001 -- every failure reaches the parent, with its traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _GroupStop(StopRequest):
    """The parent's signal handlers while the slices train: the first SIGINT or SIGTERM is the
    group's stop request, passed to the slices at their next boundary; later ones change nothing
    here (a second Ctrl-C in the terminal reaches the slices themselves). A signal the process
    ignores stays ignored."""

    def _handle(self, signum: int, frame) -> None:
        if not self.signum:
            self.signum = signum
            name = signal.Signals(signum).name
            os.write(2, f"\n{name}: stopping every member after this iteration to write checkpoints\n".encode())


def train_in_processes(config: TrainConfig, group_dir: Path, processes: int, *, resume: tuple | None = None) -> list:
    """Trains (or, with ``resume=(overrides, trust, group_checkpoints(...))``, resumes) the group's members in ``processes``
    forked processes; returns every member's :class:`~trpo_torchrl.app.train.RunResult` in member
    order. Raises the first slice's error once every slice has stopped."""
    from .population import progress_line

    group_dir = Path(group_dir)
    group_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, group_dir / "config.yaml")
    context = multiprocessing.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
    # the group's handlers before the first fork: a signal to this process while the slices start
    # stops them at their first boundary
    with _GroupStop() as signals:
        running = {}  # the parent's end of each slice's pipe -> (process, members)
        for members in member_slices(config.seeds, processes):
            here, there = context.Pipe()
            job = _Slice(config, group_dir, members, resume)
            process = context.Process(target=_train_slice, args=(there, job), name=f"trpo-members-{members.start}")
            process.start()
            there.close()
            running[here] = (process, members)
        processes_started = [process for process, _ in running.values()]
        results: dict[int, list] = {}  # each slice's RunResults, by its first member
        failed: dict[int, BaseException] = {}  # each failed slice's error, in the order they failed
        rows: dict[int, dict] = {}  # each iteration's (train return, accepted) of each slice's members
        waiting: dict = {}  # the slices at this boundary -> the signal each received
        ended = 0  # the signal a slice that ended early (interrupted, failed) stops the others with
        while running:
            for conn in wait(list(running)):
                process, members = running[conn]
                try:
                    message = conn.recv()
                except EOFError:  # the slice's process has ended
                    del running[conn]
                    waiting.pop(conn, None)
                    process.join()
                    if members.start not in results and members.start not in failed:
                        failed[members.start] = _died(process, members, config)
                    if members.start in failed or any(r.interrupted for r in results.get(members.start, [])):
                        ended = ended or int(signal.SIGTERM)
                    continue
                if message[0] == "rows":
                    _, iteration, total, slice_rows = message
                    rows.setdefault(iteration, {})[members.start] = slice_rows
                    if sum(map(len, rows[iteration].values())) == config.seeds:  # every slice is past it
                        slices = rows.pop(iteration)
                        done = [{"train_return": r, "step_accepted": a} for k in sorted(slices) for r, a in slices[k]]
                        if config.progress:
                            print(progress_line(iteration, total, done), flush=True)
                elif message[0] == "boundary":
                    waiting[conn] = message[1]
                elif message[0] == "done":
                    results[members.start] = message[1]
                else:
                    kind, detail = message
                    failed[members.start] = detail if kind == "app_error" else _failed(detail, members, config)
            if waiting and len(waiting) == len(running):  # every slice still training is at the boundary
                signum = signals.signum or next((s for s in waiting.values() if s), 0) or ended
                for conn in waiting:
                    try:
                        conn.send(signum)
                    except OSError:  # the slice ended meanwhile (a second Ctrl-C, killed): its EOF comes next
                        pass
                waiting.clear()
    for process in processes_started:
        process.join()
    if failed:
        raise next(iter(failed.values()))  # the first to fail; the others may be its consequences
    return [result for start in sorted(results) for result in results[start]]


def _seeds(members: range, config: TrainConfig) -> str:
    return f"seeds {config.seed + members.start}..{config.seed + members.stop - 1}"


def _failed(trace: str, members: range, config: TrainConfig) -> MemberProcessError:
    return MemberProcessError(
        f"the process training {_seeds(members, config)} failed (the other members stopped at their iteration "
        f"boundary with checkpoints):\n{trace}"
    )


def _died(process, members: range, config: TrainConfig) -> MemberProcessError:
    code = process.exitcode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
        if -code == signal.SIGKILL:
            how += " (the kernel's out-of-memory killer sends it)"
    else:
        how = f"ended (exit code {code})"
    return MemberProcessError(
        f"the process training {_seeds(members, config)} {how} without its results; the other members stopped at "
        "their next iteration boundary with checkpoints, so the group's members are at different iterations: "
        "resume each member's run directory on its own (--resume RUN_DIR)"
    )
