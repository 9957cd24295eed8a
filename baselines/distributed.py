"""Several processes, one job: torch.distributed as `torchrun` (or `accelerate launch`) starts it.

    torchrun --nproc-per-node K -m evaluate.run ...
    torchrun --nproc-per-node K -m morse.train ...   (likewise baselines.tasks.train_dash)

Without WORLD_SIZE > 1 in the environment nothing here starts a process group, and a run is the plain
single process it always was. Under torchrun every rank joins one group (gloo on CPU, NCCL on CUDA, with a
gloo side group for the small control messages: barriers and gathers of Python objects).

A dead rank must not hang the others. A collective only notices a missing peer at its timeout, and ranks
meet rarely (a sweep's ranks sample for minutes without talking), so each rank also runs a heartbeat
thread on the launcher's key-value store: it bumps its own counter every second and watches the others'.
A rank whose counter stops for DEAD_AFTER_S, or that marks itself failed, stops every other rank with one
`error:` line naming it. torchrun itself stops the survivors on its node at once (SIGTERM); they then name
the rank whose heartbeat stopped, and only the lowest surviving rank prints.
"""

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

DEAD_AFTER_S = 20.0        # a heartbeat this old means the rank (or its node) is gone
BEAT_S = 1.0
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
WAIT_TIMEOUT = timedelta(days=1)  # barriers wait for other ranks' work; the heartbeat catches the dead
RESUME = "finished work is kept: rerun the same command to resume"


class RankLost(RuntimeError):
    pass


class UnevenBatchError(ValueError):
    """A global batch that does not split evenly over the ranks: the trainer's command line prints it in one line."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"
    control: object = field(default=None, repr=False)   # the gloo group for barriers and object gathers
    heartbeat: object = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """This rank's device: `cuda` means the GPU torchrun gave this local rank."""
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def describe(self) -> str:
        return "1 process" if self.size == 1 else f"{self.size} processes ({self.backend})"

    def barrier(self) -> None:
        if self.size > 1:
            with self._lost_rank():
                dist.monitored_barrier(group=self.control, timeout=WAIT_TIMEOUT, wait_all_ranks=True)

    @contextmanager
    def _lost_rank(self):
        """A collective that fails because a peer vanished raises RankLost naming it (from the heartbeats)."""
        try:
            yield
        except (RuntimeError, dist.DistError) as e:
            time.sleep(5 * BEAT_S)
            dead = self.heartbeat.stale(3 * BEAT_S) if self.heartbeat is not None else []
            who = f"rank {', '.join(map(str, dead))}" if dead else "another rank"
            raise RankLost(f"{who} is gone ({type(e).__name__} in a collective); {RESUME}") from e

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); [obj] in a single process."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.main else None
        with self._lost_rank():
            dist.gather_object(obj, out, dst=0, group=self.control)
        return out

    def part(self, n: int) -> slice:
        """This rank's rows of a global batch of n (n must divide evenly: see `check_batch`)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def check_batch(self, n: int) -> None:
        if n % self.size:
            raise UnevenBatchError(f"--batch-size {n} does not split evenly over {self.size} ranks; the global batch "
                                   "is what matches a one-process run")

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a per-rank scalar over ranks (a logged loss), as a float."""
        if self.size > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.size
        return value.item()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        with self._lost_rank():
            dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str = "cpu") -> World:
    if not launched():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.device(device_name).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend != "gloo" else dist.group.WORLD
    world = World(rank, size, local, backend, control)
    world.heartbeat = Heartbeat(rank, size)
    signal.signal(signal.SIGTERM, world.heartbeat.on_sigterm)
    return world


@contextmanager
def session(device_name: str = "cpu"):
    """A World for the block; marks this rank done or failed for the others' heartbeat watchers, and leaves the
    process group (a rank that raised is named by the others within a second)."""
    world = init(device_name)
    try:
        yield world
    except RankLost as e:
        _die(f"error: {e}")
    except BaseException:
        if world.heartbeat is not None:
            world.heartbeat.stop("failed")
        raise
    finally:
        if world.heartbeat is not None:
            world.heartbeat.stop("done")
            dist.destroy_process_group()


def _store():
    """A client of the store the launcher (or rank 0) hosts: the process group's own rendezvous point."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=30))
    run = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(f"morse-heartbeat/{run}/", store)


class Heartbeat:
    """This rank's heartbeat on the store, and a watch on every other rank's."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size, self.store = rank, size, _store()
        self.count, self.state, self.lock = 0, "", threading.Lock()
        start = time.monotonic()
        self.seen = {r: (None, start) for r in range(size) if r != rank}  # last value, when it last changed
        self.finished: set[int] = set()
        self.halt = threading.Event()
        self._beat()
        threading.Thread(target=self._run, name="morse-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        self.count += 1
        self.store.set(str(self.rank), self.state or str(self.count))

    def _run(self) -> None:
        while not self.halt.wait(BEAT_S):
            try:
                with self.lock:
                    if self.halt.is_set():
                        return
                    self._beat()
                    problem = self._check()
            except Exception as e:  # the store's host is gone: its node died, or the launcher stopped
                problem = f"lost the launcher's store ({type(e).__name__}); another node or the launcher stopped"
            if problem:
                _die(f"error: {problem}; stopping rank {self.rank}; {RESUME}")

    def _check(self) -> str | None:
        now = time.monotonic()
        for r, (last, since) in list(self.seen.items()):
            value = self.store.get(str(r)).decode() if self.store.check([str(r)]) else None
            if value == "failed":
                return f"rank {r} failed (its error is above)"
            if value == "done":
                self.finished.add(r)
                del self.seen[r]
            elif value != last:
                self.seen[r] = value, now
            elif now - since > DEAD_AFTER_S:
                return f"rank {r} stopped responding (no heartbeat for {now - since:.0f} s: killed, or its node gone)"
        return None

    def stale(self, age_s: float) -> list[int]:
        now = time.monotonic()
        return [r for r, (_, since) in self.seen.items() if now - since > age_s]

    def stop(self, state: str) -> None:
        with self.lock:
            if self.halt.is_set():
                return
            self.halt.set()
            self.state = state
            try:
                self.store.set(str(self.rank), state)
            except Exception:
                pass  # the store is gone with the launcher: there is no one left to tell

    def on_sigterm(self, signum, frame) -> None:
        """The launcher stops the survivors when a rank dies: give the heartbeats a few beats to show which one
        stopped, and let the lowest surviving rank name it."""
        time.sleep(5 * BEAT_S)
        dead = self.stale(3 * BEAT_S)  # live ranks beat every BEAT_S; slack for a loaded machine's thread switches
        self.halt.set()
        if dead and self.rank == min(set(range(self.size)) - set(dead) - self.finished):
            _die(f"error: rank {', '.join(map(str, dead))} died; the launcher stopped the other ranks; {RESUME}",
                 128 + signum)
        _die(f"error: stopped by SIGTERM; {RESUME}" if not dead and self.rank == 0 else "", 128 + signum)


_said = threading.Lock()


def _die(line: str, code: int = 1) -> None:
    """Say `line` (once per process, whichever thread gets here first) and exit at once: the main thread may sit
    in a collective that would never return."""
    if line and _said.acquire(blocking=False):
        print(line, file=sys.stderr, flush=True)
    os._exit(code)


def ddp(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """`module` behind DistributedDataParallel under torchrun (gradients averaged over ranks in backward), else
    itself. Every rank then feeds its slice of the same global batch (`World.part`), so a step sees the same
    examples as one process would: a loss that is a mean over equal slices gives the same gradient."""
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # A Dot leaves the Dash's deepest level out, whose adapters then get no gradient in a step.
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)
