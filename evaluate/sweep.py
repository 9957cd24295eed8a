"""Every method x budget on the same per-sample seeds, cached per (method, budget, shard).

A shard is a fixed run of seeds, so the cache does not depend on batch size. Each shard is
written to a temporary file and renamed into place: a killed run leaves either a complete
shard or none, and a rerun redoes only what is missing. A shard that does not load, or was
made by another configuration, is recomputed.
"""

import hashlib
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


@dataclass
class Cell:
    """All samples and the summed trace of one method at one budget."""

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


def run_cell(method, denoiser, budget, seeds, shape, cache_dir: Path, fingerprint: str,
             batch_size=64, shard_size=250, device="cpu", progress=None, spacing="trailing", conditions=None) -> Cell:
    cell_dir = cache_dir / method.name / f"budget-{budget:g}"
    cell_dir.mkdir(parents=True, exist_ok=True)
    samples, cell = [], Cell(method.name, budget, torch.empty(0))
    for k in range(0, len(seeds), shard_size):
        shard_seeds = seeds[k:k + shard_size]
        key = shard_key({**method.config(), "spacing": spacing}, budget, shard_seeds, fingerprint)
        path = cell_dir / f"shard-{shard_seeds[0]}-{shard_seeds[-1]}.safetensors"
        got = _load_shard(path, key)
        if got is None:
            x, trace = sample_shard(method, denoiser, shard_seeds, budget, shape, batch_size, device, spacing,
                                    conditions)
            save_atomic({"samples": x}, path, {"key": key, "trace": json.dumps(trace)})
            cell.fresh_network_time_s += sum(trace["network_time_s"].values())
        else:
            (x, trace), cell.cached_shards = got, cell.cached_shards + 1
        samples.append(x)
        add_trace(cell, trace, len(shard_seeds) / len(seeds))
        if progress is not None:
            progress.update(len(shard_seeds))
    cell.samples = torch.cat(samples)
    return cell


def sweep(methods, budgets, denoiser, seeds, shape, out: Path, fingerprint: str, opts: dict, device,
          conditions=None) -> list[Cell]:
    """Every method at every budget, with one progress bar over all samples."""
    cells = []
    with tqdm(total=len(methods) * len(budgets) * len(seeds), desc="sweep", unit="sample") as bar:
        for m in methods:
            for b in budgets:
                bar.set_postfix(method=m.name, budget=f"{b:g}")
                cells.append(run_cell(m, denoiser, b, seeds, shape, out / "cache", fingerprint, opts["batch_size"],
                                      SHARD_SIZE, device, bar, opts["spacing"], conditions))
    return cells
