"""Regenerate the Morse paper: one command per group of its tables and figures, with the published numbers beside
ours.

    python -m evaluate.paper --list
    python -m evaluate.paper --group A [--weights DIR] [--device cuda] [--num-samples K] [--out DIR]
        [--batch-size 64] [--dtype fp16] [--max-hours H] [--budgets 3,10] [--force]
    python -m evaluate.paper --group A --latency-only --random-weights [--device cuda]

A group (evaluate/paper.toml) is one evaluate.run sweep per task, run through the ordinary harness (same cache,
same resume: rerun the command to continue), after which this module writes the paper-style figure per task
(quality against LSD, log-log, one panel per solver) and table (per-budget and mean speedups, the published
number beside ours where one exists; evaluate/published.csv, each number with its source, those found only in
secondary sources marked with a dagger). Groups E and F take the accelerators and Dot ablations that are
registered when they run.

`--weights DIR` holds what a group needs: DIR/<task>/ each checkpoint, DIR/<task>.npz (or an image folder
DIR/<task>-reference/) the FID reference, and DIR/<prompts file> the MS-COCO captions; checkpoints not there come
from the Hugging Face cache. Anything missing: one line each, with the command that gets it, exit code 2, nothing
written. Before sampling, the group's time is estimated from a latency probe of the Dash on this device and the
samples x LSD it will run, printed, and checked against --max-hours. `--latency-only --random-weights` prices a
group without any download: per task N, GFLOP and the time per budget, from the real architectures.

Writes OUT (default reports/paper/<group>, or reports/paper/<group>-latency-<device>): each task's evaluate.run
report in OUT/<task>/, and paper.md with the figures (PNG and PDF) and tables (also as speedups.csv, quality.csv and
their .tex).
"""

import argparse
import os
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd

import evaluate.run
from baselines.checkpoint import write_text_atomic
from baselines.tasks import TASKS, get_task
from evaluate.methods import Context, resolve, valid_names
from evaluate.provenance import BadInput
from evaluate.speedup import speedup_text

HERE = Path(__file__).resolve().parent
GROUPS_FILE, PUBLISHED_FILE = HERE / "paper.toml", HERE / "published.csv"
REPORTS = HERE.parent / "reports"  # the committed latency reports behind --list's estimates (a source checkout)
SECONDARY = "\u2020"  # the dagger marking a number found only in secondary sources


@dataclass(frozen=True)
class Run:
    """One task's sweep in a group."""

    task: str
    methods: tuple[str, ...]
    budgets: tuple[float, ...]
    num_samples: int
    guidance: tuple[float, ...] = ()
    prompts: str | None = None
    discover: tuple[str, ...] = ()  # registry name patterns, matched when the group runs
    dots: tuple[str, ...] = ()      # the solvers whose trained Dot its Morse methods load
    rows: int = 1                   # Dash rows per step and image (2 under classifier-free guidance)

    def with_discovered(self) -> "Run":
        """The run with every registered method matching `discover` added (the registry as it is now)."""
        found = [n for n in valid_names() if n not in self.methods and any(fnmatch(n, p) for p in self.discover)]
        return Run(**{**self.__dict__, "methods": (*self.methods, *found)})


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    paper: str
    runs: tuple[Run, ...] = field(default_factory=tuple)


def groups() -> dict[str, Group]:
    data = tomllib.loads(GROUPS_FILE.read_text())["groups"]
    return {name: Group(name, g["title"], g["paper"], tuple(
        Run(**{k: tuple(v) if isinstance(v, list) else v for k, v in run.items()}) for run in g["runs"]))
        for name, g in data.items()}


def published() -> pd.DataFrame:
    return pd.read_csv(PUBLISHED_FILE, dtype=str, keep_default_na=False)


# -- what a group needs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """Where a run's checkpoint, reference and prompts are under --weights DIR (None: not there)."""

    weights: Path | None
    reference: Path | None
    prompts: Path | None


def inputs(run: Run, root: Path | None) -> Inputs:
    def there(*names):
        return next((root / n for n in names if n and (root / n).exists()), None) if root else None
    return Inputs(there(run.task), there(f"{run.task}.npz", f"{run.task}-reference"), there(run.prompts))


def download_commands(task, folder: str) -> list[str]:
    """The `hf download` commands that leave the task's checkpoint in `folder` as its loader reads it."""
    if hasattr(task, "repo_id"):
        return [f"hf download {task.repo_id} --local-dir {folder}"]
    commands = []
    for component, (repo, sub, _) in getattr(task, "components", {}).items():
        command = f"hf download {repo} --local-dir {folder}" + ("" if sub else f"/{component}")
        commands += [command] if command not in commands else []
    return commands


def dot_command(task: str, solver: str, where: str) -> str:
    return f"python -m morse.train --task {task} --solver {solver} --weights {where}/{task} --device cuda"


def needs_fid(task) -> bool:
    return "fid" in task.metrics and bool(task.default_fid_samples or task.primary_metric == "fid")


def reference_text(run: Run, where: str) -> str:
    hint = getattr(TASKS[run.task], "reference_hint", "") or "the real images"
    return f"{where}/{run.task}.npz (mu and sigma) or {where}/{run.task}-reference/ (images): {hint}"


def prompts_text(run: Run, where: str) -> str:
    return f"{where}/{run.prompts}: MS-COCO's captions (in annotations_trainval2014.zip from https://cocodataset.org)"


def missing_dash(run: Run, root: Path | None) -> list[str]:
    """One line if the run's Dash checkpoint is not there (checked without building it), with the commands that get
    it, and one per Dot its Morse methods will need (those are checked once the Dash is there)."""
    where = str(root or "DIR")
    task = get_task(run.task, weights=inputs(run, root).weights)
    try:
        task.checksum()
    except (FileNotFoundError, ValueError) as e:
        get = " and ".join(f"`{c}`" for c in download_commands(task, f"{where}/{run.task}")) or str(e)
        return [f"{run.task}: no Dash weights ({str(e).splitlines()[0][:120]}); get them: {get}, then pass "
                f"--weights {where}"] + [f"{run.task}: the Dot for {s} is checked once the Dash is there; train it "
                                         f"with `{dot_command(run.task, s, where)}`" for s in run.dots]
    return []


def missing_data(run: Run, root: Path | None) -> list[str]:
    """One line per missing FID reference or prompt file of the run."""
    where, found = str(root or "DIR"), inputs(run, root)
    lines = [f"{run.task}: no FID reference at {reference_text(run, where)}"] \
        if needs_fid(TASKS[run.task]) and not found.reference else []
    return lines + ([f"{run.task}: no prompts at {prompts_text(run, where)}"] if run.prompts and not found.prompts
                    else [])


def needs(run: Run) -> list[str]:
    """What a run needs, as --list prints it."""
    task = get_task(run.task)
    lines = ["weights: " + " and ".join(download_commands(task, f"DIR/{run.task}"))]
    lines += [f"reference: {reference_text(run, 'DIR')}"] if needs_fid(task) else []
    lines += [f"prompts: {prompts_text(run, 'DIR')}"] if run.prompts else []
    return lines + [f"Dot ({s}): {dot_command(run.task, s, 'DIR')}" for s in run.dots]


def checked_methods(run: Run, root: Path | None, random_weights: bool = False,
                    dots_required: bool = True) -> tuple[Run, list[str], list[str]]:
    """(the run with the methods that can run on its task and the solvers they wrap, missing-file lines, notes).
    Every method is built as the harness builds it; a Dot not there is a missing file (in a latency-only run an
    untrained one prices it), a discovered method that refuses the task is left out with a note."""
    run = run.with_discovered()
    task = get_task(run.task, weights=None if random_weights else inputs(run, root).weights,
                    random_weights=random_weights)
    ctx = Context(task, task.dash())
    methods, lines, notes = list(run.methods), [], []
    for name in run.methods:
        try:
            wraps = resolve(name, ctx).wraps
        except FileNotFoundError as e:
            lines += [f"{run.task}: {str(e).splitlines()[0]}"] if dots_required else []
            continue
        except ValueError as e:
            if name not in discovered(run):
                raise BadInput(f"{run.task}: {name}: {str(e).splitlines()[0]}") from None
            methods.remove(name)
            notes.append(f"{name} left out on {run.task}: {str(e).splitlines()[0]}")
            continue
        if wraps and wraps not in methods:
            methods.insert(methods.index(name), wraps)
    return Run(**{**run.__dict__, "methods": tuple(methods), "discover": ()}), lines, notes


def discovered(run: Run) -> set[str]:
    """The methods found by `discover` (not listed by the group): those may be left out of a task."""
    return {n for n in run.methods if any(fnmatch(n, p) for p in run.discover)}


# -- the harness --------------------------------------------------------------------------------------------------

def harness(argv: list[str]) -> int:
    """evaluate.run's CLI on `argv`, with sys.argv set so its report header names the command that reruns it."""
    saved = sys.argv
    sys.argv = ["evaluate.run", *argv]
    try:
        return evaluate.run.main(argv)
    finally:
        sys.argv = saved


def run_argv(run: Run, args, found: Inputs, out: Path) -> list[str]:
    argv = ["--task", run.task, "--methods", ",".join(run.methods), "--budgets", ",".join(f"{b:g}" for b in
            budgets_of(run, args)), "--num-samples", str(samples_of(run, args)), "--out", str(out),
            "--device", args.device, "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    for flag, value in (("--weights", found.weights), ("--reference", found.reference), ("--prompts", found.prompts),
                        ("--clip-model", args.clip_model), ("--clip-weights", args.clip_weights),
                        ("--bootstrap", args.bootstrap)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--guidance", ",".join(f"{w:g}" for w in run.guidance)] if run.guidance else []
    return argv + (["--force"] if args.force else [])


def budgets_of(run: Run, args) -> tuple[float, ...]:
    return tuple(float(b) for b in args.budgets.split(",")) if args.budgets else run.budgets


def samples_of(run: Run, args) -> int:
    return args.num_samples or run.num_samples


def latency_argv(run: Run, args, found: Inputs, out: Path, methods: str | None = None,
                 batches: str | None = None) -> list[str]:
    argv = ["--task", run.task, "--methods", methods or ",".join(run.methods), "--latency-only", "--out", str(out),
            "--device", args.device, "--dtype", args.dtype, "--latency-budget-s", str(args.latency_budget_s)]
    argv += ["--latency-batches", batches] if batches else []
    return argv + (["--random-weights"] if args.random_weights else ["--weights", str(found.weights)]
                   if found.weights else [])


def dash_ms(table: pd.DataFrame, batch: int | None = None) -> tuple[float, int]:
    """(Dash ms per image, the batch it was measured at): at `batch` where measured, else the largest batch."""
    dash = table[table.network == "dash"].sort_values("batch")
    row = dash[dash.batch == batch].iloc[-1] if batch in set(dash.batch) else dash.iloc[-1]
    return float(row.ms_per_image), int(row.batch)


def cell_lsd(run: Run, args) -> float:
    """LSD the run samples per image over all its cells: a cell costs at most its budget in Dash calls, each of
    `rows` rows per image."""
    return sum(budgets_of(run, args)) * run.rows * len(run.methods) * max(1, len(run.guidance))


def hours(run: Run, args, ms_per_image: float) -> float:
    return samples_of(run, args) * cell_lsd(run, args) * ms_per_image / 3.6e6


def probe(runs: list[Run], args, root: Path | None) -> list[tuple[Run, float, int, str]]:
    """(run, Dash ms per image, batch, device) of each run from a latency-only probe of its Dash on this device at
    the sampling batch size, written to a temporary folder."""
    got = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            out = Path(tmp) / run.task
            if harness(latency_argv(run, args, inputs(run, root), out, "ddim", str(args.batch_size))) != 0:
                raise BadInput(f"the latency probe of {run.task} failed (its error is above)")
            table = pd.read_csv(out / f"{run.task}.csv")
            got.append((run, *dash_ms(table, args.batch_size), str(table.device.iloc[0])))
    return got


def estimate_lines(priced, args) -> tuple[float, list[str]]:
    total, lines = 0.0, []
    for run, ms, batch, device in priced:
        h = hours(run, args, ms)
        total += h
        lines.append(f"{run.task}: {samples_of(run, args):,} samples x {cell_lsd(run, args):g} LSD "
                     f"({len(run.methods)} methods, budgets {', '.join(f'{b:g}' for b in budgets_of(run, args))}"
                     + (f", {len(run.guidance)} guidance scales" if run.guidance else "")
                     + f") x {ms:.3g} ms per image and Dash call (batch {batch}, {device}) = {fmt_hours(h)}")
    return total, lines


def fmt_hours(h: float) -> str:
    return f"{h * 3600:.1f} s" if h < 1 / 60 else f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h"


# -- published numbers beside ours ---------------------------------------------------------------------------------

class Sources:
    """Footnote numbers of the sources a table cites, in order of first use."""

    def __init__(self):
        self.cited: dict[str, int] = {}

    def cite(self, row) -> str:
        number = self.cited.setdefault(row.source, len(self.cited) + 1)
        return f"[{number}]"

    def lines(self) -> list[str]:
        return [f"[{n}] {source}" for source, n in self.cited.items()] + [
            f"{SECONDARY} found only in secondary sources (summaries or reviews of the paper), not in the paper's own "
            "text as available to us: treat as approximate"]


def matching(pub: pd.DataFrame, task: str, method: str, quantities, baseline: str = "*",
             baselines=()) -> pd.DataFrame:
    """Published rows for our `method` (fnmatch patterns; "baseline": any method some accelerator wraps) on `task`
    (or "all" tasks), the task's own first."""
    def fits(r):
        who = method in baselines if r.method == "baseline" else fnmatch(method, r.method)
        return r.quantity in quantities and r.task in (task, "all") and who and fnmatch(baseline, r.vs or "*")
    rows = pub[[fits(r) for r in pub.itertuples()]] if len(pub) else pub
    return rows.sort_values("task", key=lambda t: t == "all", kind="stable")


def published_text(rows: pd.DataFrame, sources: Sources, with_budget: bool = True) -> str:
    def one(r):
        unit = "x" if r.quantity.startswith("speedup") else ""
        where = f" at {r.budget} LSD" if with_budget and r.budget else ""
        scope = " (all tasks)" if r.task == "all" else ""
        return f"{r.value}{unit}{SECONDARY if r.secondary == 'yes' else ''}{where}{scope} {sources.cite(r)}"
    return "; ".join(one(r) for r in rows.itertuples())


def read_speedups(folder: Path) -> pd.DataFrame:
    path = folder / "speedup.csv"
    if not path.exists():
        return pd.DataFrame()
    speed = pd.read_csv(path)
    for col in ("bound", "excluded"):
        speed[col] = speed[col].fillna("").astype(str)
    return speed


def speedup_table(task: str, speed: pd.DataFrame, pub: pd.DataFrame, sources: Sources) -> pd.DataFrame:
    """One row per (metric, guidance, accelerator, baseline): the speedup at each baseline budget, our mean over
    the budgets that count, and the published number beside it."""
    if speed.empty:
        return pd.DataFrame()
    keys = [k for k in ("metric", "guidance", "method", "baseline") if k in speed.columns]
    rows = []
    for key, g in speed.groupby(keys, dropna=False, sort=False):
        ident = dict(zip(keys, key))
        row = {"task": task, **{k: ("" if v != v else f"{v:g}" if isinstance(v, float) else v)
                                for k, v in ident.items()}}
        for r in g[g.row == "budget"].sort_values("budget").itertuples():
            row[f"{r.budget:g}"] = speedup_text(r.speedup, r.bound) + (" (excl.)" if r.excluded else "")
        mean = g[g.row == "mean"]
        row["mean (ours)"] = speedup_text(mean.speedup.iloc[0], mean.bound.iloc[0]) if len(mean) else ""
        found = matching(pub, task, ident["method"], ("speedup_mean", "speedup", "speedup_max"), ident["baseline"])
        row["published"] = published_text(found, sources) or "none known"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def quality_table(task: str, df: pd.DataFrame, metric: str, pub: pd.DataFrame, sources: Sources, baselines,
                  reduced: bool) -> pd.DataFrame:
    """Our quality beside every published number for a method of this run on this task (FID, CLIP score)."""
    ours = df[df.metric == metric]
    rows = []
    for method in dict.fromkeys(ours.method):
        for r in matching(pub, task, method, (metric,), baselines=baselines).itertuples():
            if r.task != task or not r.budget:
                continue
            mine = ours[(ours.method == method) & (ours.budget == float(r.budget))]
            value = "not run at this budget" if mine.empty else "; ".join(
                f"{v:.2f}" + ("" if g != g else f" (guidance {g:g})") for v, g in zip(mine.value, mine.guidance))
            rows.append({"task": task, "method": method, "budget (LSD)": r.budget, f"{metric} (ours)": value + (
                " (fewer samples: not comparable)" if reduced and not mine.empty else ""),
                "published": published_text(pd.DataFrame([r._asdict()]), sources, with_budget=False),
                "published for": r.method + (f": {r.note}" if r.note else "")})
    return pd.DataFrame(rows)


# -- the group's page ----------------------------------------------------------------------------------------------

def panels(methods: list[str], speed: pd.DataFrame) -> dict[str, list[str]]:
    """Panel title -> its methods: each solver an accelerator wraps, with what wraps it; any other method alone."""
    pairs = speed[["method", "baseline"]].drop_duplicates() if len(speed) else pd.DataFrame(columns=["method",
                                                                                                      "baseline"])
    out = {f"solver: {b}": [b, *dict.fromkeys(pairs[pairs.baseline == b].method)]
           for b in dict.fromkeys(pairs.baseline)}
    placed = {m for ms in out.values() for m in ms}
    return out | {m: [m] for m in methods if m not in placed}


def figure(run: Run, df: pd.DataFrame, speed: pd.DataFrame, metric: str, out: Path, pub, sources) -> str:
    """The paper-style figure of one task; its file name."""
    from evaluate.report import labelled, plot_quality_panels

    shown = labelled(df)  # a guided sweep draws one curve per (method, guidance)
    raw = panels(list(dict.fromkeys(df.method)), speed)
    baselines = set(speed.baseline) if len(speed) else set()
    drawn, marks = {}, {}
    for title, methods in raw.items():
        drawn[title] = [shown_name for m, shown_name in dict.fromkeys(zip(df.method, shown.method)) if m in methods]
        for m in methods:
            rows = matching(pub, run.task, m, (metric,), baselines=baselines)
            far = 4 * df.budget.max()  # a 1000-step reference point would squeeze the measured range
            rows = rows[(rows.task == run.task) & (rows.budget != "")]
            rows = rows[rows.budget.astype(float) <= far]
            for r in rows.itertuples():
                label = f"{r.method} published{SECONDARY if r.secondary == 'yes' else ''} {sources.cite(r)}"
                marks.setdefault(title, {}).setdefault(label, []).append((float(r.budget), float(r.value)))
    name = f"{run.task}_{metric}_vs_lsd.png"
    plot_quality_panels(shown, metric, drawn, out / name,
                        f"{run.task}: quality against latency, one panel per solver", run.task,
                        {t: list(m.items()) for t, m in marks.items()})
    return name


def sample_note(runs: list[Run], args) -> str:
    paper = {r.task: r.num_samples for r in runs}
    if not args.num_samples or all(args.num_samples >= n for n in paper.values()):
        return "Samples per cell: " + ", ".join(f"{t} {n:,}" for t, n in paper.items()) + " (the paper's protocol)."
    return (f"**Fewer samples than the paper: {args.num_samples:,} per cell** (paper: "
            + ", ".join(f"{t} {n:,}" for t, n in paper.items()) + "). Frechet distances are biased upward with fewer "
            "samples: our FIDs are not comparable to the published ones (marked so below); speedups compare our "
            "own cells, like with like.")


def write_group(group: Group, runs: list[Run], args, out: Path, notes: list[str], estimate: list[str]) -> None:
    pub, sources = published(), Sources()
    reduced = bool(args.num_samples) and any(args.num_samples < r.num_samples for r in runs)
    speeds, qualities, figures = [], [], []
    for run in runs:
        folder, metric = out / run.task, TASKS[run.task].primary_metric
        df, speed = pd.read_csv(folder / "results.csv"), read_speedups(folder)
        figures.append(figure(run, df, speed, metric, out, pub, sources))
        speeds.append(speedup_table(run.task, speed, pub, sources))
        baselines = set(speed.baseline) if len(speed) else set()
        qualities += [quality_table(run.task, df, m, pub, sources, baselines, reduced and m != "clip_score")
                      for m in dict.fromkeys([metric, "fid", "clip_score"]) if (df.metric == m).any()]
    speed_all = pd.concat([t for t in speeds if len(t)], ignore_index=True).fillna("") if any(map(len, speeds)) \
        else pd.DataFrame()
    quality_all = pd.concat([t for t in qualities if len(t)], ignore_index=True).fillna("") \
        if any(map(len, qualities)) else pd.DataFrame()
    for name, table in (("speedups", speed_all), ("quality", quality_all)):
        write_text_atomic(out / f"{name}.csv", table.to_csv(index=False))
        write_text_atomic(out / f"{name}.tex", table.to_latex(index=False) if len(table) else "")
    lines = [f"# Morse paper, group {group.name}: {group.title}", "", f"Paper: {group.paper}.", "",
             f"Command: `python -m evaluate.paper {' '.join(args.argv)}`", "", sample_note(runs, args), ""]
    if args.budgets:
        lines += [f"Budgets changed from the paper's: {args.budgets} LSD.", ""]
    lines += ["Estimated before the run: " + "; ".join(estimate) + ".", ""] + [f"* {n}" for n in notes]
    lines += ["", "Each task's full report (tables, CIs, NFE, samples): " + ", ".join(
        f"[{r.task}]({r.task}/index.md)" for r in runs), "", "## Speedup at equal quality", "",
        "Per baseline budget (LSD) and the mean over the budgets that count (the rule and the bounds: each task's "
        "report); the published number beside ours.", "",
        speed_all.to_markdown(index=False) if len(speed_all) else "No accelerator with its solver in the run.", "",
        "## Quality beside the published numbers", "",
        quality_all.to_markdown(index=False) if len(quality_all) else "No published quality number for these "
        "methods and tasks.", "", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Sources", ""] + [f"* {s}" for s in sources.lines()]
    write_text_atomic(out / "paper.md", "\n".join(lines) + "\n")
    print(f"paper: {out / 'paper.md'}")


# -- latency only ----------------------------------------------------------------------------------------------------

def latency_rows(run: Run, table: pd.DataFrame, pub: pd.DataFrame, sources: Sources) -> list[dict]:
    n_paper = published_text(matching(pub, run.task, "dot", ("N",)), sources)
    return [{"task": run.task, "network": r.network, "batch": r.batch, "ms per image": f"{r.ms_per_image:.3g}",
             "GFLOP per image": f"{r.gflop_per_image:.3g}",
             "N (Dash / network)": "" if r.network == "dash" else f"{r.n_median:.2f} [{r.n_min:.2f}, {r.n_max:.2f}]",
             "published N": "" if r.network == "dash" else n_paper} for r in table.itertuples()]


def price_rows(run: Run, args, ms: float, batch: int) -> list[dict]:
    """What each budget costs: per image, and for the group's samples over every method (and guidance scale)."""
    cells, n, ms = len(run.methods) * max(1, len(run.guidance)), samples_of(run, args), ms * run.rows
    return [{"task": run.task, "budget": f"{b:g}", "ms per image": f"{b * ms:.4g}",
             f"hours, {n:,} samples x {cells} cells": f"{n * b * ms * cells / 3.6e6:.3g}", "measured at batch": batch}
            for b in budgets_of(run, args)]


def write_latency(group: Group, runs: list[Run], args, out: Path) -> None:
    pub, sources = published(), Sources()
    nets, prices, priced = [], [], []
    for run in runs:
        table = pd.read_csv(out / run.task / f"{run.task}.csv")
        ms, batch = dash_ms(table, args.batch_size)
        nets += latency_rows(run, table, pub, sources)
        prices += price_rows(run, args, ms, batch)
        priced.append((run, ms, batch, str(table.device.iloc[0])))
    total, estimate = estimate_lines(priced, args)
    nets, prices = pd.DataFrame(nets), pd.DataFrame(prices)
    write_text_atomic(out / "latency.csv", nets.to_csv(index=False))
    write_text_atomic(out / "price.csv", prices.to_csv(index=False))
    lines = [f"# Morse paper, group {group.name}, latency only: {group.title}", "",
             f"Command: `python -m evaluate.paper {' '.join(args.argv)}`", "",
             "Weights: " + ("random (the real architectures from the shipped configs; latency does not depend on "
                            "weight values)" if args.random_weights else "the checkpoints"), "",
             sample_note(runs, args), "", "Each task's latency report: " + ", ".join(
                 f"[{r.task}]({r.task}/{r.task}.md)" for r in runs), "", "## Networks", "",
             nets.to_markdown(index=False), "", "## What the group costs", "",
             "A cell at budget b costs at most b Dash calls per image (Morse's Dot calls are priced in Dash calls; "
             "under classifier-free guidance each step runs two rows), "
             "so the sampling time is samples x LSD x the Dash's time per image, here at the sampling batch size "
             f"({args.batch_size}) where measured, else the largest batch measured. FID features come on top.", "",
             prices.to_markdown(index=False), "", "Estimate: " + "; ".join(estimate) + f"; total {fmt_hours(total)}.",
             "", "## Sources", ""] + [f"* {s}" for s in sources.lines()]
    write_text_atomic(out / "paper.md", "\n".join(lines) + "\n")
    print(f"estimated sampling time: {fmt_hours(total)}")
    print(f"paper: {out / 'paper.md'}")


# -- --list --------------------------------------------------------------------------------------------------------

def committed_latency(task: str) -> list[tuple[str, float, int, str]]:
    """(device, Dash ms per image, batch, report) from each committed random-weight latency report of `task`, at the
    largest batch it measured."""
    found = {}
    for path in sorted(REPORTS.rglob(f"{task}.csv")) if REPORTS.is_dir() else []:
        table = pd.read_csv(path)
        if not {"network", "ms_per_image", "weights", "device"} <= set(table.columns):
            continue
        if not str(table.weights.iloc[0]).startswith("random") or not (table.network == "dash").any():
            continue
        ms, batch = dash_ms(table)
        device = f"{table.device.iloc[0]}, {table.dtype.iloc[0]}, {table.threads.iloc[0]} thread(s), load " \
                 f"{table.load_average.iloc[0]}" if "load_average" in table.columns else str(table.device.iloc[0])
        found.setdefault(device, (device, ms, batch, str(path.relative_to(REPORTS.parent))))
    return list(found.values())


def describe(group: Group, args) -> list[str]:
    lines = [f"{group.name}. {group.title}", f"   paper: {group.paper}",
             f"   command: python -m evaluate.paper --group {group.name} --weights DIR --device cuda"]
    for run in group.runs:
        found = run.with_discovered()
        extra = f" (found now: {', '.join(found.methods[len(run.methods):]) or 'none'})" if run.discover else ""
        lines += [f"   {run.task}: methods {', '.join(run.methods)}"
                  + (f" + registered {', '.join(run.discover)}{extra}" if run.discover else "")
                  + f"; budgets {', '.join(f'{b:g}' for b in run.budgets)} LSD; {run.num_samples:,} samples"
                  + (f"; guidance {', '.join(f'{w:g}' for w in run.guidance)}" if run.guidance else "")]
        lines += [f"      {line}" for line in needs(run)]
        priced = committed_latency(run.task)
        lines += [f"      time: {fmt_hours(hours(found, args, ms))} on {device} (batch {batch}; {path})"
                  for device, ms, batch, path in priced] or [
            f"      time: no committed latency report; price it with `python -m evaluate.paper --group {group.name} "
            "--latency-only --random-weights --device cuda`"]
    return lines


def list_text(args) -> str:
    return "\n\n".join("\n".join(describe(g, args)) for g in groups().values()) + (
        "\n\nDIR: the folder passed as --weights. Times: sampling only (samples x LSD x the Dash's time per image), "
        "from the committed random-weight latency reports, on the device each was measured on.")


# -- the command -----------------------------------------------------------------------------------------------------

def sample_group(group: Group, args) -> int:
    """Check everything, estimate, then run each task through the harness and write the group's page."""
    if args.random_weights:
        raise BadInput("--random-weights gives untrained networks, whose samples mean nothing: add --latency-only")
    root = Path(args.weights) if args.weights else None
    lines = [line for run in group.runs for line in missing_dash(run, root) + missing_data(run, root)]
    if not lines:
        checked = [checked_methods(run, root) for run in group.runs]
        lines = [line for _, found, _ in checked for line in found]
    if lines:
        return missing(lines)
    runs, notes = [c[0] for c in checked], [n for c in checked for n in c[2]]
    total, estimate = estimate_lines(probe(runs, args, root), args)
    print("estimated sampling time (FID features come on top):\n  " + "\n  ".join(estimate) +
          f"\n  total {fmt_hours(total)}")
    if args.max_hours is not None and total > args.max_hours:
        raise BadInput(f"the group is estimated at {fmt_hours(total)}, above --max-hours {args.max_hours:g}: fewer "
                       f"--num-samples, or a larger --max-hours")
    out = Path(args.out or Path("reports") / "paper" / group.name)
    for run in runs:
        rc = harness(run_argv(run, args, inputs(run, root), out / run.task))
        if rc:
            return rc
    write_group(group, runs, args, out, notes, estimate)
    return 0


def latency_group(group: Group, args) -> int:
    root = Path(args.weights) if args.weights else None
    lines = [] if args.random_weights else [line for run in group.runs for line in missing_dash(run, root)[:1]]
    if lines:
        return missing(lines)
    runs, notes = [], []
    for run in group.runs:  # discovered methods that refuse the task are left out before the harness sees them
        checked, _, left = checked_methods(run, root, args.random_weights, False) if run.discover else (run, [], [])
        runs.append(checked)
        notes += left
    out = Path(args.out or Path("reports") / "paper" / f"{group.name}-latency-{args.device.split(':')[0]}")
    for run in runs:
        rc = harness(latency_argv(run, args, inputs(run, root), out / run.task, batches=args.latency_batches))
        if rc:
            return rc
    for note in notes:
        print(note)
    write_latency(group, runs, args, out)
    return 0


def missing(lines: list[str]) -> int:
    for line in lines:
        print(f"missing: {line}", file=sys.stderr)
    return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.paper", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the groups: command, weights, estimated time")
    p.add_argument("--group", help="the group to run: A-F (see --list)")
    p.add_argument("--weights", help="folder holding <task>/ checkpoints, <task>.npz references and prompt files")
    p.add_argument("--out", help="output folder (default reports/paper/<group>); rerunning it resumes")
    p.add_argument("--num-samples", type=int, help="samples per cell (default: the paper's, per task)")
    p.add_argument("--budgets", help="comma-separated LSD budgets instead of the group's (a quick look)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="sampling batch size (default 64)")
    p.add_argument("--dtype", default="fp32", help="network precision: fp32, tf32, fp16 or bf16 (default fp32)")
    p.add_argument("--max-hours", type=float, help="refuse to start a group estimated to take longer")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for the intervals (default: evaluate.run's)")
    p.add_argument("--clip-model", help="open_clip model behind CLIP score (default: evaluate.run's)")
    p.add_argument("--clip-weights", help="its weights: a file or a tag in the Hugging Face cache")
    p.add_argument("--force", action="store_true", help="accept fewer samples than evaluate.run's floor")
    p.add_argument("--latency-only", action="store_true", help="N, GFLOP and the time per budget; no sampling")
    p.add_argument("--random-weights", action="store_true", help="the real architectures, random weights "
                   "(--latency-only only): no download")
    p.add_argument("--latency-batches", help="--latency-only batch sizes (default: evaluate.run's)")
    p.add_argument("--latency-budget-s", type=float, default=120.0, help="skip a batch size whose timing is "
                   "predicted to take longer (default 120)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        if args.list:
            print(list_text(args))
            return 0
        table, args.group = groups(), (args.group or "").upper()
        if args.group not in table:
            raise BadInput(f"--group must be one of {', '.join(table)} (python -m evaluate.paper --list), got "
                           f"{args.group!r}")
        return (latency_group if args.latency_only else sample_group)(table[args.group], args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
