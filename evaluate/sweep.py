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

SHARD_SIZE = 250  # seeds per cache file: a kill loses at most this many samples per cell


class NonFiniteSamplesError(RuntimeError):
    pass


class MissingShardError(RuntimeError):
    pass


@dataclass
class Cell:
    """All samples and the summed trace of one method at one budget (and guidance scale: None when unguided)."""

    method: str
    budget: float
    samples: torch.Tensor
    nfe: dict = field(default_factory=dict)
    network_time_s: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    timesteps: list = field(default_factory=list)
    networks_per_step: list = field(default_factory=list)
    cached_shards: int = 0
    fresh_network_time_s: float = 0.0  # network time spent in this run (cached shards cost none)
    guidance: float | None = None


def shard_key(config: dict, budget: float, seeds: list[int], fingerprint: str) -> str:
    blob = json.dumps([config, budget, seeds, fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _load_shard(path: Path, key: str):
    got = load_keyed(path, key, "cache shard")
    return None if got is None else (got[0]["samples"], json.loads(got[1]["trace"]))


def add_trace(total, trace: dict, weight: float) -> None:
    """Fold one part's trace into a total (a Trace or a Cell): NFE per sample is the
    sample-weighted mean over parts, times add up, the schedule is the same in every part."""
    for name, v in trace["nfe"].items():
        total.nfe[name] = total.nfe.get(name, 0.0) + weight * v
    for name, v in trace["network_time_s"].items():
        total.network_time_s[name] = total.network_time_s.get(name, 0.0) + v
    total.wall_time_s += trace["wall_time_s"]
    total.timesteps, total.networks_per_step = trace["timesteps"], trace["networks_per_step"]


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
        add_trace(total, trace.to_dict(), len(chunk) / len(seeds))
    return torch.cat(outs), total.to_dict()


def speed_key(opts: dict) -> dict:
    """What the run's precision and compilation add to every shard's key: nothing at fp32 eager, so the caches of
    runs made before these options existed stay valid."""
    extra = {"dtype": opts.get("dtype", "fp32"), "compile": opts.get("compile", "none")}
    return {k: v for k, v in extra.items() if v != {"dtype": "fp32", "compile": "none"}[k]}


def cell_shards(method, budget, seeds, cache_dir: Path, fingerprint: str, shard_size=SHARD_SIZE, spacing="trailing",
                speed=None, guidance=None) -> list[tuple[list[int], Path, str]]:
    """(seeds, cache path, key) of each shard of one cell. A guided cell's scale is in its key and its folder (the
    scales of one sweep must not overwrite each other); an unguided one keeps the key and place it had before
    guidance was an axis, so existing caches stay valid."""
    method_dir = cache_dir / method.name
    config = {**method.config(), "spacing": spacing, **(speed or {})}
    if guidance is not None:
        method_dir, config = method_dir / f"guidance-{guidance:g}", {**config, "guidance": guidance}
    cell_dir = method_dir / f"budget-{budget:g}"
    return [(seeds[k:k + shard_size], cell_dir / f"shard-{seeds[k]}-{seeds[min(k + shard_size, len(seeds)) - 1]}"
             f".safetensors", shard_key(config, budget, seeds[k:k + shard_size], fingerprint))
            for k in range(0, len(seeds), shard_size)]


def sample_to_cache(method, denoiser, budget, shard, shape, batch_size, device, spacing, conditions) -> tuple:
    shard_seeds, path, key = shard
    x, trace = sample_shard(method, denoiser, shard_seeds, budget, shape, batch_size, device, spacing, conditions)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"samples": x}, path, {"key": key, "trace": json.dumps(trace)})
    return x, trace


def run_cell(method, denoiser, budget, seeds, shape, cache_dir: Path, fingerprint: str, batch_size=64,
             shard_size=250, device="cpu", progress=None, spacing="trailing", conditions=None, speed=None,
             fresh: dict | None = None, guidance=None) -> Cell:
    """One cell from its cached shards, sampling the missing ones; with `fresh` (the shards other ranks sampled in
    this run, path -> network seconds) every shard must already be cached. `denoiser` is the one at `guidance`."""
    samples, cell = [], Cell(method.name, budget, torch.empty(0), guidance=guidance)
    for shard in cell_shards(method, budget, seeds, cache_dir, fingerprint, shard_size, spacing, speed, guidance):
        shard_seeds, path, key = shard
        got = _load_shard(path, key)
        if got is None and fresh is not None:
            raise MissingShardError(f"{path} is missing after every rank finished sampling: --out must be on a "
                                    "filesystem every rank (every node) can read")
        if got is None:
            x, trace = sample_to_cache(method, denoiser, budget, shard, shape, batch_size, device, spacing, conditions)
            cell.fresh_network_time_s += sum(trace["network_time_s"].values())
        elif fresh is not None and str(path) in fresh:
            (x, trace), cell.fresh_network_time_s = got, cell.fresh_network_time_s + fresh[str(path)]
        else:
            (x, trace), cell.cached_shards = got, cell.cached_shards + 1
        samples.append(x)
        add_trace(cell, trace, len(shard_seeds) / len(seeds))
        if progress is not None:
            progress.update(len(shard_seeds))
    cell.samples = torch.cat(samples)
    return cell


def sample_share(methods, budgets, denoisers: dict, seeds, shape, cache_dir: Path, fingerprint: str, opts: dict,
                 device, conditions, world) -> dict[str, float]:
    """This rank's share of every cell's shards, round-robin over (guidance, method, budget, shard) so each rank gets
    a like mix of cheap and dear cells; cached shards are skipped. Returns path -> network seconds of those sampled."""
    jobs = [(den, m, b, shard) for w, den in denoisers.items() for m in methods for b in budgets
            for shard in cell_shards(m, b, seeds, cache_dir, fingerprint, SHARD_SIZE, opts["spacing"], speed_key(opts),
                                     w)]
    mine = jobs[world.rank::world.size]
    done = {}
    with tqdm(total=sum(len(s[0]) for *_, s in mine), desc=f"sweep, rank {world.rank} of {world.size}",
              unit="sample", disable=not world.main) as bar:
        for den, m, b, shard in mine:
            if _load_shard(shard[1], shard[2]) is None:
                _, trace = sample_to_cache(m, den, b, shard, shape, opts["batch_size"], device, opts["spacing"],
                                           conditions)
                done[str(shard[1])] = sum(trace["network_time_s"].values())
            bar.update(len(shard[0]))
    return done


def sweep(methods, budgets, denoisers: dict, seeds, shape, out: Path, fingerprint: str, opts: dict, device,
          conditions=None, world=None) -> list[Cell]:
    """Every method at every budget and guidance scale (`denoisers`: scale -> its denoiser; one entry, None, for an
    unguided task), with one progress bar over all samples. Under torchrun each rank samples its share into the
    cache, and rank 0 then reads every cell from it (the other ranks get no cells)."""
    fresh = None
    if world is not None and world.size > 1:
        share = sample_share(methods, budgets, denoisers, seeds, shape, out / "cache", fingerprint, opts, device,
                             conditions, world)
        world.barrier()
        shares = world.gather(share)
        if not world.main:
            return []
        # Other ranks' forwards ran beside rank 0's, not in its wall time: they count as fresh, at no time here.
        fresh = {k: v if rank == 0 else 0.0 for rank, s in enumerate(shares) for k, v in s.items()}
    cells = []
    with tqdm(total=len(denoisers) * len(methods) * len(budgets) * len(seeds), desc="sweep", unit="sample") as bar:
        for (w, den), m, b in itertools.product(denoisers.items(), methods, budgets):
            bar.set_postfix(method=m.name, budget=f"{b:g}", **({} if w is None else {"guidance": f"{w:g}"}))
            cells.append(run_cell(m, den, b, seeds, shape, out / "cache", fingerprint, opts["batch_size"], SHARD_SIZE,
                                  device, bar, opts["spacing"], conditions, speed_key(opts), fresh, w))
    return cells
