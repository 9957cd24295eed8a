"""One command for a GPU machine: does the suite run there, and how fast.

    python -m evaluate.gpu_check [--out DIR] [--device cuda]

1. the tests marked `gpu` (pytest -m gpu);
2. the latency-only report of the paper's CIFAR-10 network (task cifar10, random weights, fp16, batch 1
   and 64, Morse and DDIM) once per way of running it: eager, a plain CUDA graph, torch.compile
   (reduce-overhead), side by side with achieved TFLOP/s and share of the device's peak;
3. a short sweep of the embedded default on CUDA (DDIM and DPM-Solver++ at 4 and 8 LSD on the reference
   report's own seeds, fp32) whose FD agrees with the committed CPU reference within 1%;
4. its own report, DIR/index.md (default reports/gpu/<device>/).

Meant to take under 8 minutes on one GPU (torch.compile's compiles take most of it; each step stops after
STEP_TIMEOUT_S); not yet timed on one. Exit codes: 0 every check passed, 1 one failed (the report says
which), 2 no CUDA device (one `error:` line) or bad input.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from baselines.checkpoint import write_text_atomic
from evaluate.defaults import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "reports" / DEFAULTS["task"] / "reference" / "results.csv"  # the default task's CPU reference
MODES = {"none": "eager", "graphs": "CUDA graph", "reduce-overhead": "torch.compile"}
SWEEP = dict(methods="ddim,dpm", budgets="4,8")  # sampled on the reference's own seeds (its sample count)
TOLERANCE = 0.01   # relative FD difference a GPU may show against the CPU reference (float rounding only)
STEP_TIMEOUT_S = 240


def call(argv: list[str], timeout: float = STEP_TIMEOUT_S) -> tuple[bool, str]:
    """Run one command of the suite in its own process (a CUDA error cannot poison the next step)."""
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def gpu_tests(out: Path, device: str) -> dict:
    ok, log = call(["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"])
    summary = next((line for line in reversed(log.splitlines()) if " passed" in line or " failed" in line), log[-300:])
    return dict(name="tests marked gpu", ok=ok and " passed" in summary, lines=[f"`pytest -m gpu`: {summary}"])


def latency_modes(out: Path, device: str) -> dict:
    tables, failed = [], []
    for mode in MODES:
        folder = out / f"latency-{mode}"
        ok, log = call(["-m", "evaluate.run", "--task", "cifar10", "--methods", "morse,ddim", "--latency-only",
                        "--random-weights", "--dtype", "fp16", "--compile", mode, "--latency-batches", "1,64",
                        "--device", device, "--out", str(folder)])
        if ok:
            tables.append(pd.read_csv(folder / "cifar10.csv").assign(mode=MODES[mode]))
        else:
            failed.append(f"{MODES[mode]}: {log.strip().splitlines()[-1] if log.strip() else 'failed'}")
    lines = ["| network | batch | " + " | ".join(f"{m} ms / TFLOP/s / of peak / N" for m in MODES.values()) + " |",
             "|---|---|" + "---|" * len(MODES)]
    if tables:
        table = pd.concat(tables)
        for (net, batch), rows in table.groupby(["network", "batch"], sort=False):
            cells = []
            for mode in MODES.values():
                r = rows[rows["mode"] == mode]
                cells.append("failed" if r.empty else _cell(r.iloc[0], net))
            lines.append(f"| {net} | {batch} | " + " | ".join(cells) + " |")
    lines += [f"* failed: {f}" for f in failed]
    lines += [f"* per-mode reports: `{out.name}/latency-<mode>/cifar10.md` (fp16, random weights)"]
    return dict(name="latency: eager, CUDA graph, torch.compile", ok=not failed, lines=lines)


def _cell(r, net: str) -> str:
    share = "n/a" if r.peak_share != r.peak_share else f"{100 * r.peak_share:.1f}%"
    n = "" if net == "dash" else f" / N {r.n_median:.2f}"
    return f"{r.ms_per_call:.2f} / {r.tflops:.1f} / {share}{n}"


def compare_fd(reference: pd.DataFrame, got: pd.DataFrame, tolerance: float = TOLERANCE) -> tuple[bool, list[str]]:
    """FD of each (method, budget) the run has against the reference's, relative difference within `tolerance`."""
    fd = lambda df: df[df.metric.str.startswith("fd_") & ~df.metric.str.contains("_ci_")].set_index(  # noqa: E731
        ["method", "budget"])["value"]
    ref, run = fd(reference), fd(got)
    lines = ["| method | budget | FD, GPU | FD, CPU reference | relative difference |", "|---|---|---|---|---|"]
    ok = True
    for key, value in run.items():
        if key not in ref.index:
            ok = False
            lines.append(f"| {key[0]} | {key[1]:g} | {value:.4f} | missing | |")
            continue
        rel = abs(value - ref[key]) / ref[key]
        ok &= rel <= tolerance
        lines.append(f"| {key[0]} | {key[1]:g} | {value:.4f} | {ref[key]:.4f} | {100 * rel:.3f}% |")
    return ok and len(run) > 0, lines


def cuda_sweep(out: Path, device: str) -> dict:
    folder = out / "sweep"
    if not REFERENCE.exists():
        return dict(name="sweep on CUDA vs the CPU reference", ok=False, lines=[f"no reference at {REFERENCE}"])
    reference = pd.read_csv(REFERENCE)
    ok, log = call(["-m", "evaluate.run", "--methods", SWEEP["methods"], "--budgets", SWEEP["budgets"],
                    "--num-samples", str(int(reference.n_samples.max())), "--device", device, "--bootstrap", "20",
                    "--out", str(folder)])
    if not ok:
        return dict(name="sweep on CUDA vs the CPU reference", ok=False, lines=["```", log.strip(), "```"])
    agree, lines = compare_fd(reference, pd.read_csv(folder / "results.csv"))
    lines += [f"* within {100 * TOLERANCE:g}%: {'yes' if agree else 'NO'}; report `{out.name}/sweep/index.md`"]
    return dict(name="sweep on CUDA vs the CPU reference", ok=agree, lines=lines)


def render(steps: list[dict], device: str, wall_s: float) -> str:
    lines = [f"# GPU check: {torch.cuda.get_device_name(torch.device(device))}", "",
             f"* torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s) visible",
             f"* command: `python -m evaluate.gpu_check {' '.join(sys.argv[1:])}`".rstrip(),
             f"* wall time: {wall_s:.0f} s", f"* result: {'all passed' if all(s['ok'] for s in steps) else 'FAILED'}",
             ""]
    for s in steps:
        lines += [f"## {s['name']}: {'passed' if s['ok'] else 'FAILED'} ({s['seconds']:.0f} s)", "", *s["lines"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluate.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="report folder (default reports/gpu/<device>)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: torch sees no CUDA device: python -m evaluate.gpu_check runs on a GPU machine (CPU runs: "
              "python -m evaluate.run)", file=sys.stderr)
        return 2
    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(torch.device(args.device)).lower()).strip("-")
    out = Path(args.out or ROOT / "reports" / "gpu" / name)
    out.mkdir(parents=True, exist_ok=True)
    start, steps = time.perf_counter(), []
    for step in (gpu_tests, latency_modes, cuda_sweep):
        t = time.perf_counter()
        steps.append(dict(step(out, args.device), seconds=time.perf_counter() - t))
        print(f"{steps[-1]['name']}: {'passed' if steps[-1]['ok'] else 'FAILED'} ({steps[-1]['seconds']:.0f} s)")
    write_text_atomic(out / "index.md", render(steps, args.device, time.perf_counter() - start))
    print(f"report: {out / 'index.md'}")
    return 0 if all(s["ok"] for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
