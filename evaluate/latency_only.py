"""Latency-only mode: what each network the methods call costs on this machine, without sampling.

    python -m evaluate.run --task cifar10 --methods morse,ddim --latency-only --random-weights
        [--device cuda] [--dtype fp16] [--latency-batches 1,16,64] [--latency-budget-s 120]

Latency does not depend on weight values, so `--random-weights` measures a paper architecture without
downloading it (the task builds it from its shipped config). Each method builds its networks from its own
card or config (`Context.latency_only`): a Morse method whose task has no committed Dot, or whose Dash is
random, gets an untrained Dot with its Dot card's layers (morse.methods): same layers, same cost. Per batch
size it reports each network's per-call latency
(median over interleaved repeats, evaluate.cost), GFLOP per image from torch's FLOP counter, achieved
TFLOP/s, and N (Dash / Dot latency: median and range over the repeats). A batch size whose predicted
timing exceeds --latency-budget-s is skipped, and the report says so. Writes
reports/latency/<device>/<task>.md and .csv (or into --out).
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from baselines.checkpoint import write_text_atomic
from baselines.denoisers import Denoiser
from baselines.runtime import DTYPES, set_precision, speed_up, tune_malloc
from baselines.tasks import get_task
from evaluate.cost import DASH, device_name, measure, network_flops, peak_tflops, union_networks
from evaluate.methods import Context, resolve
from evaluate.options import Options
from evaluate.provenance import BadInput, command_line, git_commit, make_folder

REPEATS = {"cpu": 5, "cuda": 10}  # interleaved repeats per batch size (protocol: >= 5 / >= 10)


def batch_sizes(opts, device: torch.device) -> list[int]:
    if opts.latency_batches:
        try:
            sizes = sorted({int(b) for b in str(opts.latency_batches).split(",") if b.strip()})
        except ValueError:
            raise BadInput(f"--latency-batches must be comma-separated integers, got "
                           f"{opts.latency_batches!r}") from None
        if not sizes or sizes[0] < 1:
            raise BadInput(f"--latency-batches must be integers >= 1, got {opts.latency_batches!r}")
        return sizes
    return [1, 16, 64, 256] if device.type == "cuda" else [1, 16, 64]


def load_networks(opts, device):
    """(task, {name: Network}) for every network the methods call, on `device` in `dtype`."""
    try:
        task = get_task(opts.task, data_dir=opts.data_dir, weights=opts.weights,
                        random_weights=opts.random_weights)
        dash = task.dash()
        context = Context(task, dash, opts.dot_ratio, opts.dots_per_dash, latency_only=True,
                          options=opts.method_option_values)
        methods = [resolve(m, context) for m in opts.method_names]
    except (FileNotFoundError, ValueError) as e:  # missing or corrupt weights, a task that takes no --weights
        raise BadInput(str(e)) from None
    # A guided task's own denoiser: its Dash needs the (unconditional) condition a sweep's cost model times it on.
    denoiser = task.denoiser(dash) if hasattr(task, "denoiser") else Denoiser(dash, task.schedule_config)
    networks = union_networks(methods, denoiser)
    for net in networks.values():
        speed_up(net.module.to(device), opts.dtype, opts.compile)
    return task, networks, {m.name: list(m.networks(denoiser)) for m in methods}


def latency_only(opts: Options) -> Path:
    tune_malloc()
    set_precision(opts.dtype)
    device, dtype = torch.device(opts.device), DTYPES[opts.dtype]
    sizes = batch_sizes(opts, device)
    task, networks, calls = load_networks(opts, device)
    out = Path(opts.out or Path("reports") / "latency" / device.type)
    commit = git_commit(exclude=out)
    flops = network_flops(networks, task.image_shape, device, dtype)
    rows, notes = measure_batches(networks, task.image_shape, sizes, device, dtype, opts.latency_budget_s)
    name, peak = device_name(device), peak_tflops(device_name(device), opts.dtype)
    table = pd.DataFrame([dict(r, gflop_per_image=flops[r["network"]] / 1e9,
                               tflops=flops[r["network"]] * r["batch"] / (r["ms_per_call"] / 1e3) / 1e12)
                          for r in rows])
    table["peak_share"] = table.tflops / peak
    meta = dict(task=task.name, device=name, dtype=opts.dtype, compile=opts.compile, peak_tflops=peak,
                threads=torch.get_num_threads(), torch=torch.__version__, commit=commit, load_average=load_average(),
                weights=f"random (seed 0, config checksum {task.checksum()})" if opts.random_weights else
                f"checksum {task.checksum()}", command=command_line())
    for key, value in meta.items():
        table[key] = value
    make_folder(out)
    write_text_atomic(out / f"{task.name}.csv", table.to_csv(index=False))
    write_text_atomic(out / f"{task.name}.md", render(table, meta, calls, networks, notes))
    print(f"report: {out / f'{task.name}.md'}")
    return out / f"{task.name}.md"


def measure_batches(networks, shape, sizes, device, dtype, budget_s: float) -> tuple[list[dict], list[str]]:
    """Rows (network, batch, ms per call, ...) for each batch size that fits the time budget, and notes on
    the ones skipped. A batch's cost is predicted from the last measured one, linearly in the batch size."""
    rows, notes, last = [], [], None
    repeats = REPEATS.get(device.type, 5)
    for bs in sizes:
        if last is not None:
            call_s = sum(np.median(v) for v in last[1].repeats_s.values()) * bs / last[0]
            predicted = call_s * (repeats + 2)
            if predicted > budget_s:
                notes.append(f"batch {bs} skipped: predicted {predicted:.0f} s of timing (one call of every network "
                             f"~{call_s:.1f} s, {repeats} repeats + warm-up) exceeds --latency-budget-s {budget_s:g}")
                continue
            per_repeat = 1 if call_s > 0.5 else 3
        else:
            per_repeat = 1
        lat = measure(networks, shape, [bs], device, repeats, per_repeat, dtype)[bs]
        last = bs, lat
        for name, times in lat.repeats_s.items():
            ratio = lat.ratio(name)
            rows.append(dict(network=name, batch=bs, ms_per_call=lat.seconds(name) * 1e3,
                             ms_min=min(times) * 1e3, ms_max=max(times) * 1e3,
                             ms_per_image=lat.seconds(name) * 1e3 / bs, repeats=len(times), calls_per_repeat=per_repeat,
                             n_median=float(np.median(ratio)), n_min=float(ratio.min()), n_max=float(ratio.max())))
    return rows, notes


def render(table: pd.DataFrame, meta: dict, calls: dict, networks: dict, notes: list[str]) -> str:
    params = {n: sum(p.numel() for p in net.module.parameters()) / 1e6 for n, net in networks.items()}
    lines = [f"# Latency only: {meta['task']} on {meta['device']} ({meta['dtype']}, compile {meta['compile']})", ""]
    lines += [f"* {k}: {v}" for k, v in meta.items() if k not in ("task",)]
    lines += ["* networks each method calls: " + "; ".join(f"{m}: {', '.join(n)}" for m, n in calls.items()),
              "* parameters (M, shared Dash layers counted in both): " +
              ", ".join(f"{n} {p:.2f}" for n, p in params.items()),
              f"* batch sizes run: {', '.join(str(b) for b in sorted(table.batch.unique()))}"]
    lines += [f"* {n}" for n in notes]
    lines += ["", "Per-call latency: median over interleaved repeats (each repeat times every network in turn); "
              "N = Dash / network latency, median [min, max] over the repeats.", "",
              "| network | batch | ms per call | [min, max] | ms per image | GFLOP per image | TFLOP/s | of peak | N |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        n = "" if r.network == DASH else f"{r.n_median:.2f} [{r.n_min:.2f}, {r.n_max:.2f}]"
        lines.append(f"| {r.network} | {r.batch} | {r.ms_per_call:.2f} | [{r.ms_min:.2f}, {r.ms_max:.2f}] | "
                     f"{r.ms_per_image:.2f} | {r.gflop_per_image:.2f} | {r.tflops:.3f} | {share(r.peak_share)} | {n} |")
    return "\n".join(lines) + "\n"


def load_average() -> str:
    """The machine's 1-minute load average and core count: CPU timings taken beside other jobs run slow, and
    small ops slower still (two threads wait for each other at every barrier)."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def share(fraction: float) -> str:
    return "n/a" if fraction != fraction else f"{100 * fraction:.1f}%"
