"""The suite's main job: sweep methods x budgets on paired seeds, measure quality, NFE and
latency, compute speedup at equal quality, write tables and plots.

    python -m evaluate.run --methods morse,ddim,dpm [--task fmnist] [--budgets 2,4,8,16]
        [--num-samples 1000] [--batch-size 64] [--device cpu] [--seed 0] [--out DIR]
        [--dtype fp32|tf32|fp16|bf16] [--compile none|graphs|reduce-overhead|max-autotune]
        [--prompts FILE] [--guidance 1.5,3,5,7.5] [--clip-model NAME --clip-weights FILE|TAG]
    torchrun --nproc-per-node K -m evaluate.run ...   (shards dealt out to K ranks; rank 0 reports)

Exit codes: 0 done, 2 bad input (one line on stderr saying what to do).
"""

import argparse
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from baselines import distributed
from baselines.denoisers import Denoiser
from baselines.runtime import DTYPES, set_precision, speed_up, tune_malloc
from baselines.tasks import get_task
from evaluate.cost import cost_model, device_name, gflop_header, n_header, peak_header, union_networks
from evaluate.defaults import FLAGS
from evaluate.latency_only import latency_only
from evaluate.methods import Context, resolve
from evaluate.metrics import HIGHER_IS_BETTER, score
from evaluate.metrics import build as build_metrics
from evaluate.options import Options, check_budgets, validate
from evaluate.provenance import BadInput, command_line, git_commit, make_folder
from evaluate.report import write_report
from evaluate.speedup import speedup_table
from evaluate.sweep import MissingShardError, NonFiniteSamplesError, Sampling, ShardCache, SweepSpec, sweep

__all__ = ["BadInput", "Options", "git_commit", "main", "run", "validate"]


def guidance_scales(task, scales: list[float]) -> list[float | None]:
    """The sweep's guidance axis: [None] for a task without guidance (its cells and cache keys carry none)."""
    if not hasattr(task, "denoiser"):
        if scales:
            raise BadInput(f"task {task.name} has no classifier-free guidance: leave out --guidance")
        return [None]
    return scales or [task.default_guidance]


def load(opts: Options, device, with_metrics: bool = True):
    """The task, its Dash, the methods, the metrics (only where they are computed: rank 0) and the sweep's guidance
    axis; any missing or corrupt input is a BadInput raised before anything is written."""
    try:
        task = get_task(opts.task, data_dir=opts.data_dir, weights=opts.weights,
                        random_weights=opts.random_weights, reference=opts.reference, prompts=opts.prompts)
        check_budgets(opts.budget_values, task)
        guidance = guidance_scales(task, list(opts.guidance_values))
        dash = task.dash().to(device)
        context = Context(task, dash, opts.dot_ratio, opts.dots_per_dash, options=opts.method_option_values)
        methods = [resolve(m, context) for m in opts.method_names]
        metrics, primary = build_metrics(task, opts, device) if with_metrics else ({}, None)
    except (FileNotFoundError, ValueError) as e:  # missing or corrupt weights, data, reference; bad task
        raise BadInput(str(e)) from None
    return task, dash, methods, metrics, primary, guidance


def start_report(out: Path, world=None) -> None:
    """Create the output folder, unfinished until this run writes index.md (its last file; rank 0 writes it)."""
    make_folder(out)
    if world is None or world.main:
        (out / "index.md").unlink(missing_ok=True)


def report_header(task, spec: SweepSpec, opts: Options, device, commit, costs, metrics, timer, world) -> dict:
    """`costs`: each rank's cost model, rank 0's first (it prices the cells)."""
    cost, seeds = costs[0], spec.seeds
    header = dict(task=task.name, command=command_line(), methods=", ".join(m.name for m in spec.methods),
                  budgets=", ".join(f"{b:g}" for b in spec.budgets),
                  guidance=", ".join(f"{w:g}" for w in spec.guidance if w is not None) or "n/a (unguided task)",
                  samples_per_cell=len(seeds),
                  metric_input="images clamped to [-1, 1]" if opts.clamp_samples else "samples as sampled (unclamped)",
                  seeds=f"{seeds[0]}..{seeds[-1]}", device=f"{device} ({device_name(device)})",
                  devices=world.describe(), dtype=opts.dtype, compile=opts.compile,
                  threads=torch.get_num_threads(), commit=commit, network_latency=cost.describe(),
                  peak_share=peak_header(cost, device_name(device), opts.dtype),
                  gflop_per_image=gflop_header(cost), N_for_lsd=n_header(cost))
    if len(costs) > 1:
        header["network_latency_per_rank"] = " | ".join(f"rank {r}: {c.describe()}" for r, c in enumerate(costs))
    for metric in metrics.values():
        header.update(metric.describe(len(seeds)))
    header.update(wall_time=f"{timer.total():.0f} s ({timer.fresh} of {timer.cells} cells sampled fresh)",
                  harness_overhead=f"{100 * timer.overhead() / timer.total():.1f}% of the run (outside network "
                                   f"forwards, latency probe and metrics)")
    return header


class Timer:
    """Where the run's time went: sampling, network forwards, latency probe, metrics."""

    def __init__(self):
        self.start, self.phases = time.perf_counter(), {}
        self.network = self.sampling = 0.0
        self.fresh = self.cells = 0

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        yield
        self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def add_cells(self, cells) -> None:
        self.sampling += sum(c.wall_time_s for c in cells)
        self.network += sum(c.fresh_network_time_s for c in cells)
        self.fresh, self.cells = sum(c.cached_shards == 0 for c in cells), len(cells)

    def total(self) -> float:
        return time.perf_counter() - self.start

    def overhead(self) -> float:
        return self.total() - self.network - sum(self.phases.values())

    def summary(self) -> str:
        return (f"sampling {self.sampling:.1f} s (network forwards this run {self.network:.1f} s), metrics "
                f"{self.phases.get('metrics', 0):.1f} s, latency probe {self.phases.get('latency', 0):.1f} s, total "
                f"{self.total():.1f} s; harness overhead {100 * self.overhead() / self.total():.1f}% of the run")


ROW_DTYPE = {"fp32": "float32", "tf32": "tf32", "fp16": "float16", "bf16": "bfloat16"}


def provenance(task, spec: SweepSpec, device, commit, world, clamped: bool) -> dict:
    """The columns every row of results.csv carries: what made its numbers."""
    return dict(task=task.name, seeds=f"{spec.seeds[0]}..{spec.seeds[-1]}", dtype=ROW_DTYPE[spec.dtype],
                device=str(device), torch=torch.__version__, commit=commit, compile=spec.compile, devices=world.size,
                device_name=device_name(device), clamped=clamped)


def resamples(opts: Options, n: int) -> list[np.ndarray]:
    """Bootstrap indices over seeds, drawn once: every cell and metric uses the same ones (paired)."""
    rng = np.random.default_rng(opts.seed)
    return [rng.integers(0, n, n) for _ in range(opts.bootstrap)]


def sweep_spec(opts: Options, methods, guidance) -> SweepSpec:
    return SweepSpec(tuple(methods), opts.budget_values, tuple(range(opts.seed, opts.seed + opts.num_samples)),
                     tuple(guidance), opts.batch_size, opts.spacing, opts.dtype, opts.compile)


def run(**given) -> Path:
    """One run of the harness; `given`: option values by their flag names (evaluate.defaults.FLAGS)."""
    opts = validate(given)
    if opts.latency_only:
        return latency_only(opts)
    tune_malloc()
    set_precision(opts.dtype)
    with distributed.session(opts.device) as world:
        timer, device = Timer(), world.device(opts.device)
        task, dash, methods, metrics, primary, guidance = load(opts, device, with_metrics=world.main)
        out = Path(opts.out or Path("reports") / task.name / opts.run)
        commit = git_commit(exclude=out)  # the code as it was when the run started
        start_report(out, world)
        spec = sweep_spec(opts, methods, guidance)
        sampling = Sampling(prepare(dash, task, spec, device), task.image_shape, device, task.conditions)
        with timer.phase("latency"):  # guidance changes no network's cost per call: one denoiser prices them all
            cost = cost_model(methods, next(iter(sampling.denoisers.values())), task.image_shape, opts.batch_size,
                              device, dtype=DTYPES[opts.dtype])
        cells = sweep(spec, ShardCache.of(out / "cache", task, opts.shard_size), sampling, world)
        costs = world.gather(cost)  # every rank measured its own device
        if not world.main:
            return out
        timer.add_cells(cells)
        with timer.phase("metrics"):
            df, speed = evaluate_cells(cells, metrics, primary, task, cost, spec, opts,
                                       provenance(task, spec, device, commit, world, opts.clamp_samples))
        header = report_header(task, spec, opts, device, commit, costs, metrics, timer, world)
        write_report(out, df, speed, cells, header, primary)
        print(timer.summary())
        print(f"report: {out / 'index.md'}")
        return out


def evaluate_cells(cells, metrics: dict, primary: str, task, cost, spec: SweepSpec, opts: Options, prov: dict):
    """(the tidy results table, the speedup table): every metric on every cell, speedups at equal quality."""
    boot = resamples(opts, len(spec.seeds))
    df, boot_q, cell_costs = score(cells, metrics, task, cost, prov, boot, list(spec.seeds))
    parts = [speedups(df, m, spec, boot, boot_q[m], cell_costs, opts.saturation, task.meaningful_max)
             for m in speedup_metrics(metrics, primary)]
    parts = [p for p in parts if len(p)]
    return df, pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def speedup_metrics(metrics: dict, primary: str) -> list[str]:
    """The metrics speedups at equal quality are read from: the primary, and CLIP score beside it where the task
    has prompts (its users read both: equal FID and equal prompt fidelity can rank accelerators differently)."""
    return [primary] + [m for m in ("clip_score",) if m in metrics and m != primary]


def speedups(df: pd.DataFrame, metric: str, spec: SweepSpec, boot, boot_q: dict, cell_costs: dict,
             saturation: float, meaningful_max: float | None) -> pd.DataFrame:
    """Speedup at equal `metric` at each guidance scale, the accelerator against its baseline at the same scale
    (guidance moves quality, so curves at different scales are not comparable). An unguided task's table has no
    guidance column, as before guidance was an axis. `meaningful_max`: the task's threshold on its primary metric.

    speedup_table reads lower as better; a higher-is-better score (CLIP score, at most 100) enters as its gap to
    100, which keeps the log-log interpolation and the relative saturation rule meaningful, and its baseline
    quality is written back as the score."""
    q = df[df.metric == metric]
    higher = metric in HIGHER_IS_BETTER
    if higher:
        q = q.assign(value=100.0 - q.value)
        boot_q = {k: 100.0 - np.asarray(v) for k, v in boot_q.items()}
    parts = []
    for w in spec.guidance:
        def at(d, w=w):
            return {(m, b): v for (m, b, g), v in d.items() if g == w}
        sub = q[q.guidance.isna()] if w is None else q[q.guidance == w]
        part = speedup_table(sub, spec.methods, boot, at(boot_q), saturation,
                             lsd_repeats=at({k: c.lsd_repeats for k, c in cell_costs.items()}),
                             meaningful_max=math.inf if higher else meaningful_max)
        parts.append(part if w is None or part.empty else part.assign(guidance=w))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True).assign(metric=metric)
    return out.assign(baseline_quality=100.0 - out.baseline_quality) if higher else out


def prepare(dash, task, spec: SweepSpec, device) -> dict[float | None, Denoiser]:
    """The Dash's denoiser at each guidance scale of the sweep (a guided task builds it: unconditional
    condition, guidance embedding), with every network the methods call on `device`, in the run's precision and
    compiled as asked."""
    if hasattr(task, "denoiser"):
        denoisers = {w: task.denoiser(dash, w).to(device) for w in spec.guidance}
    else:
        denoisers = {None: Denoiser(dash, task.schedule_config).to(device)}
    for net in union_networks(spec.methods, next(iter(denoisers.values()))).values():
        speed_up(net.module.to(device), spec.dtype, spec.compile)
    return denoisers


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, flag in FLAGS.items():
        name = "--" + key.replace("_", "-")
        # Unset (None) flags say in their help what fills them.
        text = flag.help if flag.default is None else f"{flag.help} (default {flag.default})"
        if isinstance(flag.default, bool):
            p.add_argument(name, action="store_true", help=text)
        else:
            p.add_argument(name, type=flag.kind or type(flag.default), default=flag.default, help=text)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        run(**vars(args))
    except (BadInput, NonFiniteSamplesError, MissingShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"error: cannot write {e.filename}: choose a writable --out (or MORSE_BENCH_CACHE for statistics)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Finished cache shards are complete files and index.md is not written: nothing is lost or half-done.
        print("interrupted: finished samples are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
