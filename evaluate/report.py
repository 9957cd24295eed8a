"""Reports: tidy results.csv, Markdown and LaTeX tables, plots, sample grids, index.md.

index.md is written last and atomically: a report folder without it is unfinished.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from baselines.checkpoint import atomic_path, write_text_atomic  # noqa: E402
from baselines.tasks import TASKS  # noqa: E402
from evaluate.metrics import HIGHER_IS_BETTER  # noqa: E402
from evaluate.speedup import LOWER, NO_BOUND, POINT, UPPER, speedup_text  # noqa: E402

SPEEDUP_METHOD = (
    "The LSD each accelerator needs for the baseline's quality: monotone (running-minimum) log-log linear "
    "interpolation of its curve, no extrapolation. Where it never reaches the baseline's quality in its "
    "measured range the speedup is an upper bound (<, budget / its largest LSD); where it beats the baseline "
    "already at its smallest LSD, a lower bound (>, budget / its smallest LSD). A mean that includes bounds is "
    "a bound. Intervals: 95% bootstrap over seeds (paired resamples; a resample out of range counts with its "
    "bound) and, beside it, the range over the latency repeats (N's spread moves every Dot cell's LSD). "
    "`<name>-oracle` is `<name>` with the Dash at its Dot steps charged as Dot calls: the ceiling of its "
    "schedules; the fraction is the accelerator's speedup over the oracle's.")


def pivot(df: pd.DataFrame, metric: str, fmt="{:.2f}") -> pd.DataFrame:
    sub = df[df.metric == metric]
    table = sub.pivot_table(index="method", columns="budget", values="value", aggfunc="first")
    table.columns = [f"{c:g}" for c in table.columns]
    return table.map(lambda v: "" if v != v else fmt.format(v))


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of a guided sweep with the scale in the method's label, so every table and curve keyed by method
    shows one (method, guidance) each; an unguided run's rows unchanged."""
    if "guidance" not in df.columns or df.guidance.isna().all():
        return df
    return df.assign(method=[m if g != g else f"{m} (guidance {g:g})" for m, g in zip(df.method, df.guidance)])


def grids(cells, out: Path, n=64) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for cell in cells:
        w = getattr(cell, "guidance", None)
        name = f"{cell.method}-budget{cell.budget:g}" + ("" if w is None else f"-guidance{w:g}") + ".png"
        grid = make_grid(cell.samples[:n].clamp(-1, 1), nrow=8, normalize=True, value_range=(-1, 1), pad_value=1)
        save_image(grid, out / name)
        names.append(name)
    return names


AXIS_LABELS = {"lsd": "latency (LSD)", "nfe_total": "NFE (all networks)", "fid": "FID",
               "clip_score": "CLIP score", "budget": "budget (LSD)"}


def axis_label(metric: str, task: str | None = None) -> str:
    """A name a reader knows for a metric: the task's own (`metric_labels`, e.g. what its classifier was trained
    on), else the suite's, else the column name."""
    labels = {**AXIS_LABELS, **getattr(TASKS.get(task), "metric_labels", {})}
    if metric in labels:
        return labels[metric]
    return f"FD ({metric[3:]} classifier features)" if metric.startswith("fd_") else metric


def budget_ticks(lsd, budgets) -> list[float] | None:
    """The budgets that lie within the curves' LSD range (a guided step's two rows cost 2 LSD: not there), or None
    where fewer than two do."""
    lsd = [v for v in lsd if v > 0]
    inside = [b for b in sorted(set(budgets)) if lsd and min(lsd) * 0.95 <= b <= max(lsd) * 1.05]
    return inside if len(inside) > 1 else None


def nice_ticks(lo: float, hi: float) -> list[float]:
    """Round values inside [lo, hi] for a log axis: 1-2-5 per decade, finer where that leaves fewer than two, and
    three values spaced evenly in log on a range too short for any of those."""
    for steps in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):
        decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
        ticks = sorted({float(f"{s * 10.0 ** d:.6g}") for d in decades for s in steps if lo <= s * 10.0 ** d <= hi})
        if len(ticks) >= 2:
            return ticks
    return sorted({float(f"{v:.3g}") for v in np.geomspace(lo, hi, 3)})


def log_axis(ax, which: str, values, ticks=None) -> None:
    """`ax`'s x or y axis (`which`) on a log scale with plain labels ("2", "8", "0.5"): at `ticks` (e.g. the
    budgets) with round values added where the data reach beyond them, and unlabelled minor ticks: matplotlib's
    own labels ("3x10^0 4x10^0") overlap on short ranges."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    values = [v for v in np.asarray(values, float).ravel() if v > 0 and np.isfinite(v)]
    if values:
        ticks = sorted(ticks or [])
        # a round value joins the given ticks only away from them (no two labels closer than a factor 1.4)
        ticks += [t for t in nice_ticks(min(values), max(values)) if all(max(t / k, k / t) > 1.4 for k in ticks)]
    if ticks:
        axis.set_major_locator(FixedLocator(sorted(ticks)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, ax, path: Path) -> None:
    for a in np.atleast_1d(ax).ravel():
        a.grid(True, which="both", alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def plot_quality(df: pd.DataFrame, x: str, metric: str, path: Path, title: str, task: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    quality_curves(ax, df, x, metric, task)
    ax.set_title(title, fontsize=9)
    _save(fig, ax, path)


def quality_curves(ax, df: pd.DataFrame, x: str, metric: str, task: str | None = None, methods=None) -> None:
    """`metric` against `x` (LSD or NFE) per method, with its bootstrap band; log-log (a bounded score such as
    CLIP's on a linear y axis), x ticks at the run's budgets."""
    df = df if methods is None else df[df.method.isin(methods)]
    q = df[df.metric == metric].set_index(["method", "budget"])["value"]
    xs = df[df.metric == x].set_index(["method", "budget"])["value"]
    lo = df[df.metric == f"{metric}_ci_low"].set_index(["method", "budget"])["value"]
    hi = df[df.metric == f"{metric}_ci_high"].set_index(["method", "budget"])["value"]
    for method in sorted(set(m for m, _ in q.index)):
        keys = sorted(k for k in q.index if k[0] == method)
        xv, yv = [xs[k] for k in keys], [q[k] for k in keys]
        ax.plot(xv, yv, marker="o", label=method)
        if all(k in lo.index for k in keys):
            ax.fill_between(xv, [lo[k] for k in keys], [hi[k] for k in keys], alpha=0.15)
    log_axis(ax, "x", xs.values, budget_ticks(xs.values, df.budget) if x == "lsd" else None)
    if metric not in HIGHER_IS_BETTER:  # a bounded score such as CLIP's reads better, and may be 0, on a linear axis
        log_axis(ax, "y", [*q.values, *lo.values, *hi.values])
    ax.set_xlabel(axis_label(x, task))
    ax.set_ylabel(axis_label(metric, task))


def plot_quality_panels(df: pd.DataFrame, metric: str, panels: dict[str, list[str]], path: Path, title: str,
                        task: str | None = None, published: dict[str, list[tuple]] | None = None) -> None:
    """The paper's figure: `metric` against LSD, log-log, one panel per solver (`panels`: title -> the methods
    drawn in it, the solver and what wraps it); `published`: title -> (label, [(budget, value)]) drawn hollow."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, methods) in zip(axes[0], panels.items(), strict=True):
        quality_curves(ax, df, "lsd", metric, task, methods)
        for label, points in (published or {}).get(name, []):
            xs, ys = zip(*points)
            ax.plot(xs, ys, ls="none", marker="D", mfc="none", color="black", label=label)
        if (published or {}).get(name):  # ticks over ours and the published points
            xs = [x for line in ax.get_lines() for x in line.get_xdata()]
            log_axis(ax, "x", xs, budget_ticks(xs, df.budget))
            if metric not in HIGHER_IS_BETTER:
                log_axis(ax, "y", [y for line in ax.get_lines() for y in line.get_ydata()])
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, axes, path)


def tradeoff_metric(df: pd.DataFrame, quality: str) -> str | None:
    """The quality metric to trade CLIP score against (the primary, or FID where CLIP score is the primary), or
    None where the run lacks either."""
    if not (df.metric == "clip_score").any():
        return None
    return next((m for m in (quality, "fid") if m != "clip_score" and (df.metric == m).any()), None)


def plot_tradeoff(df: pd.DataFrame, metric: str, path: Path, title: str, task: str | None = None) -> None:
    """`metric` against CLIP score as guidance varies, as a guidance study draws it: one curve per method and
    budget through its guidance scales (each point labelled with its scale)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    keys = ["method", "budget", "guidance"]
    both = df[df.metric == metric].set_index(keys)["value"].to_frame("y").join(
        df[df.metric == "clip_score"].set_index(keys)["value"].rename("x"), how="inner").reset_index()
    for (method, budget), g in both.groupby(["method", "budget"]):
        g = g.sort_values("guidance")
        ax.plot(g.x, g.y, marker="o", label=f"{method}, budget {budget:g}")
        for _, r in g.iterrows():
            if r.guidance == r.guidance:
                ax.annotate(f"{r.guidance:g}", (r.x, r.y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{axis_label('clip_score', task)} (higher is better)")
    ax.set_ylabel(f"{axis_label(metric, task)} (lower is better)")
    ax.set_title(title, fontsize=9)
    _save(fig, ax, path)


def plot_speedup(speed: pd.DataFrame, path: Path) -> None:
    """Values as filled circles with their bootstrap bars, bounds as triangles pointing where the true
    speedup lies, excluded budgets hollow; the mean over included budgets as a dashed line."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    per = speed[speed.row == "budget"]
    for k, ((name, base), g) in enumerate(per.groupby(["method", "baseline"])):
        color = f"C{k}"
        for bound, marker in ((POINT, "o"), (UPPER, "v"), (LOWER, "^")):
            for excluded in (False, True):
                sel = g[(g.bound == bound) & ((g.excluded != "") == excluded)]
                if sel.empty:
                    continue
                low = (sel.speedup - sel.ci_low).clip(lower=0).fillna(0)
                high = (sel.ci_high - sel.speedup).clip(lower=0).fillna(0)
                label = f"{name} vs {base}" if bound == POINT and not excluded else None
                ax.errorbar(sel.budget, sel.speedup, yerr=[low, high], fmt=marker, capsize=3, color=color,
                            mfc="none" if excluded else color, ms=8 if bound else 6, label=label)
        ax.plot(g.budget, g.speedup, color=color, lw=0.8, alpha=0.5)
        mean = speed[(speed.method == name) & (speed.row == "mean")]
        if len(mean) and mean.speedup.notna().all():
            m = mean.iloc[0]
            ax.axhline(m.speedup, color=color, ls="--", lw=0.8,
                       label=f"{name} mean {speedup_text(m.speedup, m.bound)} over {m.over}")
    ax.axhline(1.0, color="grey", lw=0.8)
    if len(per):
        log_axis(ax, "x", per.budget, sorted(set(per.budget)))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("baseline budget, latency (LSD)")
    ax.set_ylabel("speedup at equal quality")
    ax.set_title("v: upper bound (never reaches the baseline), ^: lower bound; hollow: excluded", fontsize=7)
    _save(fig, ax, path)


def speedup_tables(speed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per budget and method, as text with bounds and the mean last; the detailed table)."""
    per = speed[speed.row == "budget"]
    short = per.pivot_table(index="method", columns="budget", values="speedup", aggfunc="first")
    text = short.copy().astype(object)
    for _, r in per.iterrows():
        text.loc[r.method, r.budget] = speedup_text(r.speedup, r.bound) + (" (excl.)" if r.excluded else "")
    text.columns = [f"{c:g}" for c in text.columns]
    means = speed[speed.row == "mean"].set_index("method")
    text["mean"] = [speedup_text(means.speedup[m], means.bound[m]) if m in means.index else "" for m in text.index]
    flip = {POINT: "", UPPER: ">", LOWER: "<"}  # the LSD needed lies the other way from the speedup's bound
    rows = []
    for _, r in per.iterrows():
        n_range = f"{r.n_low:.2f}-{r.n_high:.2f}" if r.n_low == r.n_low else ""
        row = {"method": r.method, "baseline": r.baseline, "budget": f"{r.budget:g}",
               "baseline quality": f"{r.baseline_quality:.3g}", "LSD needed": f"{flip[r.bound]}{r.lsd:.3g}",
               "speedup": speedup_text(r.speedup, r.bound), "95% CI (seeds)": f"{r.ci_low:.2f}-{r.ci_high:.2f}",
               "range over N repeats": n_range}
        if "of_oracle" in per.columns and r.of_oracle == r.of_oracle:
            row["oracle speedup"] = speedup_text(r.oracle_speedup, r.oracle_bound)
            row["fraction of oracle"] = speedup_text(r.of_oracle, r.of_oracle_bound, unit="")
        row["excluded from mean"] = r.excluded
        rows.append(row)
    return text, pd.DataFrame(rows).fillna("")


def mean_lines(speed: pd.DataFrame) -> list[str]:
    """One line per method: its mean (a bound when bounds enter it), what it averages and what it leaves out."""
    lines = []
    for _, m in speed[speed.row == "mean"].iterrows():
        g = speed[(speed.method == m.method) & (speed.row == "budget")]
        left = "; ".join(f"{b:g} LSD: {why}" for b, why in zip(g.budget, g.excluded, strict=True) if why)
        left = f"; excluded: {left}" if left else ""
        if m.bound == NO_BOUND:
            what = "no mean: some budgets are upper bounds and others lower bounds"
        elif m.speedup != m.speedup:
            what = "no budget left to average"
        else:
            kind = {POINT: "", UPPER: " (an upper bound: at some budgets the baseline's quality is never reached)",
                    LOWER: " (a lower bound: some budgets are beaten already at the smallest LSD)"}[m.bound]
            what = f"mean speedup {speedup_text(m.speedup, m.bound)} over budgets {m.over}{kind}"
            if m.ci_low == m.ci_low:
                what += f", 95% CI {m.ci_low:.2f}-{m.ci_high:.2f}"
            if m.n_low == m.n_low:
                what += f", {m.n_low:.2f}-{m.n_high:.2f} over the latency repeats"
        lines.append(f"* **{m.method} vs {m.baseline}**: {what}{left}")
    return lines


def tradeoff_lines(df: pd.DataFrame, quality: str, out: Path, task: str) -> list[str]:
    """The quality-versus-CLIP-score plot over the guidance scales, and its section of index.md (none without both
    metrics)."""
    metric = tradeoff_metric(df, quality)
    if metric is None:
        return []
    name = f"{metric}_vs_clip_score.png"
    plot_tradeoff(df, metric, out / name, f"{task}: {axis_label(metric, task)} vs CLIP score over guidance scales",
                  task)
    return ["## Guidance trade-off", "", f"{metric} against CLIP score, one curve per method and budget through the "
            "guidance scales (each point labelled with its scale).", "", f"![{metric} vs CLIP score]({name})", ""]


def cost_lines(tables: dict, nfe: list[str]) -> list[str]:
    """The cost section: one NFE table per network that ran and their total, then wall time per image."""
    lines = ["## Cost", "", "NFE per sample, by network and in total, then sampling wall time per image. The wall "
             "time is priced only from the samples drawn in this run: a cell read in part from the cache is timed on "
             "its fresh shards, and one read whole from the cache is left blank (its time was measured by another "
             "run, under another load).", ""]
    for m in nfe:
        lines += [f"`{m}`", "", tables[m].to_markdown(), ""]
    return lines + ["`ms_per_image`", "", tables["ms_per_image"].to_markdown(), ""]


def write_report(out: Path, df: pd.DataFrame, speed: pd.DataFrame, cells, header: dict, quality: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.md").unlink(missing_ok=True)
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    if len(speed):
        speed.to_csv(out / "speedup.csv", index=False)
    tradeoff = tradeoff_lines(df, quality, out, header["task"])
    df, speed = labelled(df), labelled(speed)

    # One NFE table per network that ran (the distilled LCM is its own network), then their total.
    nfe = sorted(m for m in df.metric.unique() if m.startswith("nfe_") and m != "nfe_total")
    nfe += ["nfe_total"] if (df.metric == "nfe_total").any() else []
    tables = {quality: pivot(df, quality), "lsd": pivot(df, "lsd"),
              **{m: pivot(df, m, "{:.0f}") for m in nfe}, "ms_per_image": pivot(df, "ms_per_image")}
    kid = [m for m in df.metric.unique() if m.startswith("kid_") and "_ci_" not in m]
    digits = {"confidence": "{:.3f}", **dict.fromkeys(kid, "{:.4f}")}  # KID is ~1e-3
    for extra in ("confidence", "fid", "clip_score", *kid):
        if extra != quality and (df.metric == extra).any():
            tables[extra] = pivot(df, extra, digits.get(extra, "{:.2f}"))
    # One speedup table per metric it was read from (the primary first, e.g. CLIP score beside it).
    by_metric = {m: speed[speed.metric == m] for m in speed.metric.unique()} if len(speed) else {}
    details = {}
    for m, sp in by_metric.items():
        key = "speedup" if m == quality else f"speedup_at_equal_{m}"
        tables[key], details[m] = speedup_tables(sp)
    md = [f"### {name} (columns: budget in LSD)\n\n{t.to_markdown() if hasattr(t, 'to_markdown') else t}\n"
          for name, t in tables.items()]
    write_text_atomic(out / "tables.md", "\n".join(md))
    latex = "\n".join(f"% {name}\n" + t.to_latex() for name, t in tables.items())
    write_text_atomic(out / "tables.tex", latex)

    task = header["task"]
    plot_quality(df, "lsd", quality, out / f"{quality}_vs_lsd.png", f"{task}: {axis_label(quality, task)} vs latency",
                 task)
    plot_quality(df, "nfe_total", quality, out / f"{quality}_vs_nfe.png", f"{task}: {axis_label(quality, task)} vs NFE",
                 task)
    for m, sp in by_metric.items():
        plot_speedup(sp, out / ("speedup.png" if m == quality else f"speedup_at_equal_{m}.png"))
    grid_names = grids(cells, out / "grids")

    lines = [f"# Morse Bench report: {header['task']}", "",
             f"Command: `{header['command']}`", "",
             "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in header.items() if k != "command"]
    better = "higher" if quality in HIGHER_IS_BETTER else "lower"
    lines += ["", f"## {quality} ({better} is better; 95% bootstrap CI in results.csv)", "",
              tables[quality].to_markdown(), "", f"![{quality} vs LSD]({quality}_vs_lsd.png)",
              f"![{quality} vs NFE]({quality}_vs_nfe.png)", ""] + tradeoff
    for m, sp in by_metric.items():
        key = "speedup" if m == quality else f"speedup_at_equal_{m}"
        png = f"{key}.png"
        title = "quality" if m == quality else m
        lines += [f"## Speedup at equal {title}", "", SPEEDUP_METHOD, "", f"Rule: {sp.rule.iloc[0]}.", "",
                  tables[key].to_markdown(), "", details[m].to_markdown(index=False), "", f"![speedup]({png})", ""]
        lines += mean_lines(sp) + [""]
    lines += cost_lines(tables, nfe) + ["## Samples", ""]
    lines += [f"![{g}](grids/{g})" for g in grid_names]
    write_text_atomic(out / "index.md", "\n".join(lines) + "\n")
