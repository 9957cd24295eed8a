"""Every method x budget (x guidance scale, for a guided task) on the same per-sample seeds, cached per
(method, budget, guidance, shard).

A shard is a fixed run of seeds, so the cache does not depend on batch size. Each shard is
written to a temporary file and renamed into place: a killed run leaves either a complete
shard or none, and a rerun redoes only what is missing. A shard that does not load, or was
made by another configuration, is recomputed.

Under torchrun the shards are dealt out to the ranks; since sample i depends only on seed i and a
shard's batches are the same whichever rank runs them, the union is bit for bit the single-process set.
"""

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from baselines.checkpoint import load_keyed, save_atomic
from baselines.noise import initial_noise
from baselines.trace import Trace
from evaluate.defaults import DEFAULTS


class NonFiniteSamplesError(RuntimeError):
    pass


class MissingShardError(RuntimeError):
    pass


@dataclass
class Cell:
    """All samples and the summed trace of one method at one budget (and guidance scale: None when unguided).
    Wall and network times are those of the shards sampled in this run (by any rank): a cached shard's were
    measured by another run, under another load, and would mix runs in one price."""

    method: str
    budget: float
    samples: torch.Tensor
    nfe: dict = field(default_factory=dict)
    network_time_s: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    timesteps: list = field(default_factory=list)
    networks_per_step: list = field(default_factory=list)
    cached_shards: int = 0
    fresh_network_time_s: float = 0.0  # network time spent in this process (cached shards cost none)
    fresh_samples: int = 0             # samples drawn in this run: the times above are theirs only
    guidance: float | None = None


def shard_key(config: dict, budget: float, seeds: list[int], fingerprint: str) -> str:
    blob = json.dumps([config, budget, seeds, fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def add_trace(total, trace: dict, rows: int, timed: bool = True) -> None:
    """Fold one part's trace (NFE per sample over `rows` samples) into a total (a Trace or a Cell) that holds NFE
    summed over samples until `per_sample` divides once: summing fractions such as 16/250 of each part's mean would
    make NFE depend on the batch size in its last digits. Times add up (only `timed` parts'); the schedule is the same
    in every part."""
    for name, v in trace["nfe"].items():
        total.nfe[name] = total.nfe.get(name, 0.0) + rows * v
    for name, v in trace["network_time_s"].items() if timed else ():
        total.network_time_s[name] = total.network_time_s.get(name, 0.0) + v
    total.wall_time_s += trace["wall_time_s"] if timed else 0.0
    total.timesteps, total.networks_per_step = trace["timesteps"], trace["networks_per_step"]


def per_sample(total, samples: int):
    total.nfe = {name: v / samples for name, v in total.nfe.items()}
    return total


def sample_shard(method, denoiser, seeds, budget, shape, batch_size, device, spacing, conditions=None):
    outs, total = [], Trace()
    for k in range(0, len(seeds), batch_size):
        chunk = seeds[k:k + batch_size]
        cond = conditions(chunk) if conditions is not None else None
        x, trace = method(denoiser, initial_noise(chunk, shape, device=device), budget, cond=cond, seeds=chunk,
                          spacing=spacing)
        bad = (~torch.isfinite(x.flatten(1))).any(1)
        if bad.any():
            bad_seeds = [s for s, b in zip(chunk, bad.tolist(), strict=True) if b]
            raise NonFiniteSamplesError(
                f"{method.name} at budget {budget} gave {len(bad_seeds)} non-finite samples (seeds "
                f"{bad_seeds[:5]}); check the model weights and the budget")
        outs.append(x.float().cpu())
        add_trace(total, trace.to_dict(), len(chunk))
    return torch.cat(outs), per_sample(total, len(seeds)).to_dict()


@dataclass(frozen=True)
class SweepSpec:
    """What one sweep samples: every method at every budget and guidance scale, on the same seeds."""

    methods: tuple                           # Method objects
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    guidance: tuple[float | None, ...] = (None,)  # (None,): an unguided task
    batch_size: int = 64
    spacing: str = "trailing"
    dtype: str = "fp32"
    compile: str = "none"

    def speed_key(self) -> dict:
        """What the run's precision and compilation add to every shard's key: nothing at fp32 eager, so the
        caches of runs made before these options existed stay valid."""
        return {k: v for k, v in (("dtype", self.dtype), ("compile", self.compile))
                if v != {"dtype": "fp32", "compile": "none"}[k]}

    def cells(self):
        """(guidance, method, budget) of every cell, in the order the report lists them."""
        return itertools.product(self.guidance, self.methods, self.budgets)


@dataclass(frozen=True)
class Sampling:
    """What draws the samples: the Dash's denoiser at each guidance scale of the spec, the sample shape, the
    device and the task's conditions per seed (None: unconditional)."""

    denoisers: dict
    shape: tuple
    device: object = "cpu"
    conditions: object = None


def fingerprint(task) -> str:
    """The task's part of every cache key: cached samples are valid only for the same weights."""
    return f"{task.name}|dash:{task.checksum()}"


@dataclass(frozen=True)
class Shard:
    seeds: list[int]
    path: Path
    key: str


@dataclass(frozen=True)
class ShardCache:
    """The cache of one report: `folder`/<method>[/guidance-<w>]/budget-<b>/shard-<first>-<last>.safetensors,
    each shard keyed by the method's config, the spacing, the speed options, the budget, its seeds and the task's
    fingerprint."""

    folder: Path
    fingerprint: str
    shard_size: int = DEFAULTS["shard_size"]

    @classmethod
    def of(cls, folder: Path, task, shard_size: int = DEFAULTS["shard_size"]) -> "ShardCache":
        return cls(Path(folder), fingerprint(task), shard_size)

    def shards(self, method, budget, seeds, spacing="trailing", speed=None, guidance=None) -> list[Shard]:
        """The shards of one cell. A guided cell's scale is in its key and its folder (the scales of one sweep
        must not overwrite each other); an unguided one keeps the key and place it had before guidance was an
        axis, so existing caches stay valid."""
        method_dir = self.folder / method.name
        config = {**method.config(), "spacing": spacing, **(speed or {})}
        if guidance is not None:
            method_dir, config = method_dir / f"guidance-{guidance:g}", {**config, "guidance": guidance}
        cell_dir, size = method_dir / f"budget-{budget:g}", self.shard_size
        return [Shard(seeds[k:k + size], cell_dir / f"shard-{seeds[k]}-{seeds[min(k + size, len(seeds)) - 1]}"
                      f".safetensors", shard_key(config, budget, seeds[k:k + size], self.fingerprint))
                for k in range(0, len(seeds), size)]

    def cell_shards(self, spec: SweepSpec, method, budget, guidance) -> list[Shard]:
        return self.shards(method, budget, list(spec.seeds), spec.spacing, spec.speed_key(), guidance)

    def load(self, shard: Shard):
        """(samples, trace dict), or None where the shard is missing, unreadable or made by another config."""
        got = load_keyed(shard.path, shard.key, "cache shard")
        return None if got is None else (got[0]["samples"], json.loads(got[1]["trace"]))

    def sample(self, shard: Shard, method, budget, guidance, spec: SweepSpec, sampling: Sampling) -> tuple:
        x, trace = sample_shard(method, sampling.denoisers[guidance], shard.seeds, budget, sampling.shape,
                                spec.batch_size, sampling.device, spec.spacing, sampling.conditions)
        shard.path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({"samples": x}, shard.path, {"key": shard.key, "trace": json.dumps(trace)})
        return x, trace


def run_cell(cell: tuple, spec: SweepSpec, cache: ShardCache, sampling: Sampling, progress=None,
             fresh: dict | None = None) -> Cell:
    """One cell, (guidance, method, budget), from its cached shards, sampling the missing ones; with `fresh` (the
    shards other ranks sampled in this run, path -> network seconds) every shard must already be cached."""
    guidance, method, budget = cell
    samples, out = [], Cell(method.name, budget, torch.empty(0), guidance=guidance)
    for shard in cache.cell_shards(spec, method, budget, guidance):
        got = cache.load(shard)
        if got is None and fresh is not None:
            raise MissingShardError(f"{shard.path} is missing after every rank finished sampling: --out must be on "
                                    "a filesystem every rank (every node) can read")
        if got is None:
            x, trace = cache.sample(shard, method, budget, guidance, spec, sampling)
            out.fresh_network_time_s += sum(trace["network_time_s"].values())
        elif fresh is not None and str(shard.path) in fresh:
            (x, trace), out.fresh_network_time_s = got, out.fresh_network_time_s + fresh[str(shard.path)]
        else:
            (x, trace), out.cached_shards = got, out.cached_shards + 1
        timed = got is None or (fresh is not None and str(shard.path) in fresh)
        out.fresh_samples += len(shard.seeds) if timed else 0
        samples.append(x)
        add_trace(out, trace, len(shard.seeds), timed)
        if progress is not None:
            progress.update(len(shard.seeds))
    out.samples = torch.cat(samples)
    return per_sample(out, len(spec.seeds))


def sample_share(spec: SweepSpec, cache: ShardCache, sampling: Sampling, world) -> dict[str, float]:
    """This rank's share of every cell's shards, round-robin over (guidance, method, budget, shard) so each rank gets
    a like mix of cheap and dear cells; cached shards are skipped. Returns path -> network seconds of those sampled."""
    jobs = [(w, m, b, shard) for w, m, b in spec.cells() for shard in cache.cell_shards(spec, m, b, w)]
    mine = jobs[world.rank::world.size]
    done = {}
    with tqdm(total=sum(len(s.seeds) for *_, s in mine), desc=f"sweep, rank {world.rank} of {world.size}",
              unit="sample", disable=not world.main) as bar:
        for w, m, b, shard in mine:
            if cache.load(shard) is None:
                _, trace = cache.sample(shard, m, b, w, spec, sampling)
                done[str(shard.path)] = sum(trace["network_time_s"].values())
            bar.update(len(shard.seeds))
    return done


def sweep(spec: SweepSpec, cache: ShardCache, sampling: Sampling, world=None) -> list[Cell]:
    """Every cell of `spec`, with one progress bar over all samples. Under torchrun each rank samples its share
    into the cache, and rank 0 then reads every cell from it (the other ranks get no cells)."""
    fresh = None
    if world is not None and world.size > 1:
        share = sample_share(spec, cache, sampling, world)
        world.barrier()
        shares = world.gather(share)
        if not world.main:
            return []
        # Other ranks' forwards ran beside rank 0's, not in its wall time: they count as fresh, at no time here.
        fresh = {k: v if rank == 0 else 0.0 for rank, s in enumerate(shares) for k, v in s.items()}
    cells = []
    total = len(spec.guidance) * len(spec.methods) * len(spec.budgets) * len(spec.seeds)
    with tqdm(total=total, desc="sweep", unit="sample") as bar:
        for w, m, b in spec.cells():
            bar.set_postfix(method=m.name, budget=f"{b:g}", **({} if w is None else {"guidance": f"{w:g}"}))
            cells.append(run_cell((w, m, b), spec, cache, sampling, bar, fresh))
    return cells
