"""The suite's main job: sweep methods x budgets on paired seeds, measure quality, NFE and
latency, compute speedup at equal quality, write tables and plots.

    python -m evaluate.run --methods morse,ddim,dpm [--task fmnist] [--budgets 2,4,8,16]
        [--num-samples 1000] [--batch-size 64] [--device cpu] [--seed 0] [--out DIR]

Exit codes: 0 done, 2 bad input (one line on stderr saying what to do).
"""

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from baselines.checkpoint import sha256
from baselines.denoisers import Denoiser
from baselines.runtime import resolve_device, tune_malloc
from baselines.tasks import TASKS, get_task
from baselines.tasks.data import MissingDataError
from baselines.tasks.fmnist import MissingWeightsError
from evaluate.defaults import DEFAULTS
from evaluate.features import ClassifierFeatures, InceptionFeatures
from evaluate.frechet import feature_stats, frechet_distance
from evaluate.methods import check_names, resolve
from evaluate.reference import reference_stats
from evaluate.report import write_report
from evaluate.speedup import speedup_table
from evaluate.sweep import NonFiniteSamplesError, run_cell
from morse import Morse
from morse.latency import dash_dot_times, flops_per_image, time_forward
from morse.pretrained import dot_path


class BadInput(ValueError):
    pass


def git_commit(exclude: Path | None = None, root: Path | None = None) -> str:
    """HEAD, with "+dirty" when tracked files differ from it. `exclude` (the run's output folder) does not
    count: regenerating a committed report rewrites its own tracked files, which says nothing about the code."""
    root = root or Path(__file__).resolve().parent.parent
    pathspec = []
    if exclude is not None:
        try:
            pathspec = ["--", ".", f":(exclude){Path(exclude).resolve().relative_to(root.resolve())}"]
        except ValueError:
            pass  # outside the repository: nothing of it is tracked
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *pathspec], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise BadInput(f"--budgets must be comma-separated numbers, got {text!r}") from None
    if not budgets or any(not (b >= 1 and math.isfinite(b)) for b in budgets):
        raise BadInput(f"every budget must be a number >= 1 (LSD), got {text!r}")
    return sorted(set(budgets))


def validate(opts: dict) -> dict:
    methods = [m.strip() for m in str(opts["methods"]).split(",") if m.strip()]
    if not methods:
        raise BadInput("--methods is empty; e.g. --methods morse,ddim,dpm")
    try:
        check_names(methods)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if opts["task"] not in TASKS and ":" not in opts["task"]:
        raise BadInput(f"unknown task {opts['task']!r}; valid tasks: {', '.join(TASKS)} or a class path module:Class")
    if opts["spacing"] not in ("trailing", "leading", "linspace"):
        raise BadInput(f"--spacing must be trailing, leading or linspace, got {opts['spacing']!r}")
    n = opts["num_samples"]
    if n < opts["min_samples"] and not opts["force"]:
        raise BadInput(f"--num-samples {n} is too few for a stable Frechet distance (floor "
                       f"{opts['min_samples']}); use more, or --force")
    if n < opts["warn_samples"]:
        warnings.warn(f"{n} samples per cell: Frechet distances are biased upward below "
                      f"{opts['warn_samples']}", stacklevel=2)
    if n < 2:
        raise BadInput("--num-samples must be at least 2")
    if opts["batch_size"] < 1:
        raise BadInput("--batch-size must be at least 1")
    try:
        resolve_device(opts["device"])
    except ValueError as e:
        raise BadInput(str(e)) from None
    return dict(opts, methods=methods, budgets=parse_budgets(opts["budgets"]))


def bootstrap_fd(feats, ref, indices) -> np.ndarray:
    """FD of each resample of the samples; the same indices for every cell make it paired."""
    return np.array([frechet_distance(ref, feature_stats(feats[ix])) for ix in indices])


def quality_floor(task, extractor, ref, n) -> str:
    """FD of real held-out images: what a perfect sampler would score with n samples."""
    try:
        test, _ = task.data("test")
        train, _ = task.data("train")
    except FileNotFoundError:
        return "n/a (data not available)"
    f_test = feature_stats(extractor(test[:n])[0])
    vs_train = frechet_distance(f_test, feature_stats(extractor(train[-n:])[0]))
    return (f"test x{n} vs train statistics: {frechet_distance(f_test, ref):.3f}; "
            f"test x{n} vs disjoint train subset x{n}: {vs_train:.3f}")


def measure_latency(dash, dot, shape, batch_size, device) -> tuple[dict, float, float]:
    """Forward time of each network, interleaved, at batch 1 and the sweep's batch size: N and LSD."""
    x1, t1 = torch.randn(1, *shape, device=device), torch.full((1,), 500, device=device)
    dash_flops = flops_per_image(lambda: dash(x1, t1))
    dot_flops = flops_per_image(lambda: dot(x1, x1, x1, t1, t1 + 100)) if dot is not None else math.nan
    latency = {}
    for bs in sorted({1, batch_size}):
        if dot is not None:
            dash_s, dot_s = dash_dot_times(dash, dot, shape, bs, 25, device)
        else:
            x, t = torch.randn(bs, *shape, device=device), torch.full((bs,), 500, device=device)
            dash_s, dot_s = time_forward(lambda x=x, t=t: dash(x, t), 10, 2, device), math.nan
        latency[bs] = dict(dash_ms=dash_s * 1e3, dot_ms=dot_s * 1e3, N=dash_s / dot_s,
                           dash_tflops=dash_flops * bs / dash_s / 1e12, dot_tflops=dot_flops * bs / dot_s / 1e12)
    return latency, dash_flops, dot_flops


def run(**overrides) -> Path:
    opts = validate({**DEFAULTS, **overrides})
    tune_malloc()
    t_start = time.perf_counter()
    device = torch.device(opts["device"])
    try:
        task = get_task(opts["task"], data_dir=opts["data_dir"])
    except ValueError as e:
        raise BadInput(str(e)) from None
    quality = f"fd_{task.name}"  # Frechet distance on the task classifier's features
    out = Path(opts["out"] or Path("reports") / task.name / opts["run"])
    try:
        dash = task.dash().to(device)
        classifier = task.classifier()
        methods = [resolve(m, task, dash, opts["dot_ratio"], opts["dots_per_dash"]) for m in opts["methods"]]
        extractor = ClassifierFeatures(classifier, task.classifier_path)
        ref, ref_prov = reference_stats(task, "train", None, extractor)
    except (MissingWeightsError, MissingDataError, FileNotFoundError) as e:
        raise BadInput(str(e)) from None
    commit = git_commit(exclude=out)  # the code as it was when the run started
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.md").unlink(missing_ok=True)  # until this run finishes, the folder is not a finished report
    morse_methods = [m for m in methods if isinstance(m, Morse)]
    for m in morse_methods:
        m.dot.to(device)
    denoiser = Denoiser(dash, task.schedule_config).to(device)
    seeds = list(range(opts["seed"], opts["seed"] + opts["num_samples"]))
    # Cached shards are valid only for the same weights: their checksums enter every cache key.
    fingerprint = f"{task.name}|dash:{sha256(task.dash_path)[:16]}"
    dot_sum = sha256(dot_path(task.name))[:16] if morse_methods else ""

    t_lat = time.perf_counter()
    latency, dash_flops, dot_flops = measure_latency(dash, morse_methods[0].dot if morse_methods else None,
                                                     task.image_shape, opts["batch_size"], device)
    n_measured = latency[opts["batch_size"]]["N"]
    t_lat = time.perf_counter() - t_lat

    cells = []
    total = len(methods) * len(opts["budgets"]) * len(seeds)
    with tqdm(total=total, desc="sweep", unit="sample") as bar:
        for m in methods:
            for b in opts["budgets"]:
                bar.set_postfix(method=m.name, budget=f"{b:g}")
                key = fingerprint + (f"|dot:{dot_sum}" if isinstance(m, Morse) else "")
                cells.append(run_cell(m, denoiser, b, seeds, task.image_shape, out / "cache", key,
                                      opts["batch_size"], 250, device, bar, opts["spacing"]))

    # Metrics. Bootstrap resamples the same seed indices for every cell (paired).
    t_metric = time.perf_counter()
    rng = np.random.default_rng(opts["seed"])
    boot = [rng.integers(0, len(seeds), len(seeds)) for _ in range(opts["bootstrap"])]
    inception = InceptionFeatures(device) if opts["fid_samples"] else None
    fid_ref = fid_prov = None
    if inception is not None:
        fid_ref, fid_prov = reference_stats(task, "train", opts["fid_reference"], inception)
    floor = quality_floor(task, extractor, ref, len(seeds))
    rows, boot_fd = [], {}
    for cell in tqdm(cells, desc="metrics", unit="cell"):
        feats, probs = extractor(cell.samples)
        fd = frechet_distance(ref, feature_stats(feats))
        boot_fd[(cell.method, cell.budget)] = vals = bootstrap_fd(feats, ref, boot)
        lo, hi = (np.percentile(vals, 2.5), np.percentile(vals, 97.5)) if boot else (math.nan, math.nan)
        hist = np.bincount(probs.argmax(1), minlength=len(task.classes)) / len(probs)
        nfe_dash, nfe_dot = cell.nfe.get("dash", 0.0), cell.nfe.get("dot", 0.0)
        lsd = nfe_dash + (nfe_dot / n_measured if nfe_dot else 0.0)
        net_time = sum(cell.network_time_s.values())
        prov = dict(task=task.name, method=cell.method, budget=cell.budget, n_samples=len(seeds),
                    seeds=f"{seeds[0]}..{seeds[-1]}", dtype="float32", device=str(device),
                    torch=torch.__version__, commit=commit)
        fd_prov = dict(metric_impl=f"FD on classifier features (evaluate.frechet, float64); classifier "
                       f"sha256 {extractor.checksum}", reference=f"{ref_prov['split']} x{ref_prov['count']}",
                       reference_sha256=ref_prov["sha256"])
        values = [(quality, fd, fd_prov), (f"{quality}_ci_low", lo, fd_prov), (f"{quality}_ci_high", hi, fd_prov),
                  ("confidence", float(probs.max(1).mean()), {}), ("class_min_frac", float(hist.min()), {}),
                  ("class_max_frac", float(hist.max()), {}), ("nfe_dash", nfe_dash, {}), ("nfe_dot", nfe_dot, {}),
                  ("nfe_total", nfe_dash + nfe_dot, {}), ("lsd", lsd, {"N": round(n_measured, 3)}),
                  ("ms_per_image", cell.wall_time_s / len(seeds) * 1e3, {}),
                  ("network_ms_per_image", net_time / len(seeds) * 1e3, {})]
        if inception is not None:
            k = min(opts["fid_samples"], len(seeds))
            f_inc, _ = inception(cell.samples[:k])
            values.append(("fid", frechet_distance(feature_stats(f_inc), fid_ref), dict(
                metric_impl=f"TF-Inception (sha256 {inception.checksum}) via clean-fid "
                            f"clean resize, evaluate.frechet float64", n_samples=k,
                reference=f"train x{fid_prov['count']}", reference_sha256=fid_prov["sha256"])))
        for metric, value, extra in values:
            rows.append({**prov, "lsd": lsd, "metric": metric, "value": value, **extra})
    df = pd.DataFrame(rows)

    speed = speedup_table(df[df.metric == quality], morse_methods, boot, boot_fd, opts["saturation"])
    t_metric = time.perf_counter() - t_metric

    sampling_wall = sum(c.wall_time_s for c in cells)
    network = sum(c.fresh_network_time_s for c in cells)
    fresh = [c for c in cells if c.cached_shards == 0]
    total_wall = time.perf_counter() - t_start
    overhead = total_wall - network - t_metric - t_lat
    header = dict(task=task.name, command="python -m evaluate.run " + shlex.join(sys.argv[1:]) if sys.argv[1:] else
                  "python -m evaluate.run", methods=", ".join(m.name for m in methods),
                  budgets=", ".join(f"{b:g}" for b in opts["budgets"]), samples_per_cell=len(seeds),
                  seeds=f"{seeds[0]}..{seeds[-1]}", device=str(device), threads=torch.get_num_threads(),
                  commit=commit, dash_dot_latency=" ; ".join(
                      f"batch {bs}: Dash {v['dash_ms']:.2f} ms ({v['dash_tflops']:.3f} TFLOP/s), Dot "
                      f"{v['dot_ms']:.2f} ms ({v['dot_tflops']:.3f} TFLOP/s), N {v['N']:.2f}"
                      for bs, v in latency.items()),
                  gflop_per_image=f"Dash {dash_flops / 1e9:.3f}, Dot {dot_flops / 1e9:.3f} (torch FLOP counter)",
                  N_for_lsd=f"{n_measured:.2f} (measured this run at batch {opts['batch_size']})",
                  reference=f"Fashion-MNIST {ref_prov['split']} x{ref_prov['count']}, sha256 {ref_prov['sha256']}",
                  floor=floor,
                  wall_time=f"{total_wall:.0f} s ({len(fresh)} of {len(cells)} cells sampled fresh)",
                  harness_overhead=f"{100 * overhead / total_wall:.1f}% of the run (outside network forwards, "
                                   f"latency probe and metrics)")
    write_report(out, df, speed, cells, header, quality)
    print(f"sampling {sampling_wall:.1f} s (network forwards this run {network:.1f} s), metrics {t_metric:.1f} s, "
          f"latency probe {t_lat:.1f} s, total {total_wall:.1f} s; harness overhead "
          f"{100 * overhead / total_wall:.1f}% of the run")
    print(f"report: {out / 'index.md'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluate.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", help=f"default {value}")
        else:
            kind = type(value) if value is not None and not isinstance(value, str) else str
            if key in ("dot_ratio",):
                kind = float
            if key in ("dots_per_dash",):
                kind = int
            p.add_argument(flag, type=kind, default=value, help=f"default {value}")
    args = p.parse_args(argv)
    try:
        run(**vars(args))
    except (BadInput, NonFiniteSamplesError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"error: cannot write {e.filename}: choose a writable --out (or MORSE_BENCH_CACHE for statistics)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
