"""Speedup at equal quality (the paper's headline), written here because no library has it.

For each baseline budget b with quality q_b (lower is better), find the LSD an accelerator needs to
reach q_b by interpolating its quality-vs-LSD curve linearly in log-log space;
speedup(b) = b / LSD(q_b). The curve is first made monotone (running minimum over increasing LSD:
the best quality reachable within that budget), so a noisy bump cannot give two answers.

Bounds, not omissions: there is no extrapolation, so when the accelerator never reaches q_b within
its measured LSDs the speedup is an upper bound, b / (its largest LSD), written "<"; when it beats
q_b already at its smallest LSD, a lower bound, b / (its smallest LSD), written ">".

Two rules leave a budget out of the mean (it stays in the table, with the reason):
* saturated: the baseline's next budget improves it by less than `saturation` (relative);
* not meaningful: the baseline's quality is worse than the task's `meaningful_max` (a task attribute),
  where samples are not usable and a speedup says nothing about usable sampling.
A mean over budgets that include upper bounds (and no lower ones) is an upper bound, and the reverse;
with bounds in both directions there is no mean.

Intervals: a 95% bootstrap over seeds (the paired resamples the quality intervals used), and beside
it the range over the latency repeats: N's spread moves every Dot-using cell's LSD, shifting the
accelerator's curve sideways. A resample whose target falls outside the range counts with its bound.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

POINT, UPPER, LOWER, NO_BOUND = "", "<", ">", "?"


@dataclass
class Speedup:
    budget: float
    baseline_quality: float
    lsd: float        # LSD the accelerator needs; for a bound, the end of its measured range
    speedup: float    # budget / lsd: a value, or the bound's value
    bound: str        # POINT, UPPER ("<") or LOWER (">")
    excluded: str     # why the budget is left out of the mean; "" when it counts


def monotone_curve(lsd, quality):
    order = np.argsort(lsd)
    x = np.asarray(lsd, dtype=float)[order]
    y = np.minimum.accumulate(np.asarray(quality, dtype=float)[order])
    return x, y


def lsd_for_quality(lsd, quality, target: float) -> tuple[float, str]:
    """LSD needed for `target`, or the end of the measured range with "above-range"/"below-range"."""
    x, y = monotone_curve(lsd, quality)
    if target < y[-1]:
        return x[-1], "above-range"   # never this good within the measured LSDs: needs more than x[-1]
    if target >= y[0]:
        # At least this good already at the smallest LSD: needs x[0] or less.
        return x[0], "ok" if math.isclose(target, y[0]) else "below-range"
    k = int(np.searchsorted(-y, -target, side="left"))  # first point with y <= target
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    if y0 == y1:
        return x0, "ok"
    f = (math.log(target) - math.log(y0)) / (math.log(y1) - math.log(y0))
    return math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0))), "ok"


SPEEDUP_BOUND = {"ok": POINT, "above-range": UPPER, "below-range": LOWER}


def saturated_budgets(budgets, quality, saturation: float) -> list[bool]:
    b, q = np.asarray(budgets, float), np.asarray(quality, float)
    order = np.argsort(b)
    b, q = b[order], q[order]
    flags = []
    for i in range(len(b)):
        if i + 1 < len(b):
            flags.append((q[i] - q[i + 1]) < saturation * q[i])
        else:
            flags.append(len(b) > 1 and (q[i - 1] - q[i]) < saturation * q[i - 1])
    return [flags[list(order).index(i)] for i in range(len(b))]


def speedups(baseline_budgets, baseline_quality, lsd, quality, saturation=0.05,
             meaningful_max: float | None = None) -> list[Speedup]:
    sat = saturated_budgets(baseline_budgets, baseline_quality, saturation)
    out = []
    for b, q, s in zip(baseline_budgets, baseline_quality, sat, strict=True):
        need, where = lsd_for_quality(lsd, quality, q)
        excluded = ""
        if meaningful_max is not None and q > meaningful_max:
            excluded = f"not meaningful (baseline {q:.3g} > {meaningful_max:g})"
        elif s:
            excluded = f"saturated (next budget improves the baseline by < {saturation:.0%})"
        out.append(Speedup(b, q, need, b / need, SPEEDUP_BOUND[where], excluded))
    return out


def combine_bounds(bounds) -> str:
    """The bound of a mean (or ratio) of terms with these bounds: one direction carries over,
    two directions leave it unbounded."""
    kinds = set(bounds) - {POINT}
    return NO_BOUND if len(kinds) > 1 else (kinds.pop() if kinds else POINT)


@dataclass
class MeanSpeedup:
    value: float      # nan when there is no budget to average, or bounds point both ways
    bound: str
    budgets: list


def speedup_text(value, bound, digits=2, unit="x") -> str:
    """A speedup (or a fraction of one) with its bound sign: "<0.51x" is at most, ">1.20x" at least."""
    if bound == NO_BOUND or value != value:
        return "n/a"
    return f"{bound}{value:.{digits}f}{unit}"


def mean_speedup(rows: list[Speedup], keep: list[bool] | None = None) -> MeanSpeedup:
    """Over the budgets not excluded (or those `keep` marks, for resamples that must average the same
    budgets as the point estimate)."""
    keep = keep if keep is not None else [not r.excluded for r in rows]
    used = [r for r, k in zip(rows, keep, strict=True) if k]
    bound = combine_bounds(r.bound for r in used)
    value = float(np.mean([r.speedup for r in used])) if used and bound != NO_BOUND else math.nan
    return MeanSpeedup(value, bound, [r.budget for r in used])


def ratio_bound(num: str, den: str) -> str:
    flip = {POINT: POINT, UPPER: LOWER, LOWER: UPPER, NO_BOUND: NO_BOUND}
    return combine_bounds([num, flip[den]])


@dataclass
class _Curve:
    """One accelerator against its baseline: the point estimate, and speedups (values and bounds)
    under each bootstrap resample and each latency repeat, with the mean over included budgets last."""

    name: str
    baseline: str
    rows: list[Speedup]
    mean: MeanSpeedup
    boot: tuple[np.ndarray, np.ndarray]   # (values, bounds), resample x (budgets + mean)
    reps: tuple[np.ndarray, np.ndarray]   # (values, bounds), latency repeat x (budgets + mean)
    lsd_reps: np.ndarray                  # latency repeat x budgets: LSD needed


def _with_mean(rows: list[Speedup], keep: list[bool]) -> tuple[list, list]:
    mean = mean_speedup(rows, keep)
    return [r.speedup for r in rows] + [mean.value], [r.bound for r in rows] + [mean.bound]


def _curve(name, base, bq, mq, boot_fd, n_boot, lsd_repeats, saturation, limit) -> _Curve:
    budgets, bv, mlsd, mv = list(bq.budget), list(bq.value), list(mq.lsd), list(mq.value)
    point = speedups(budgets, bv, mlsd, mv, saturation, limit)
    keep = [not r.excluded for r in point]  # the point estimate decides which budgets the mean uses
    boot = [_with_mean(speedups(budgets, [boot_fd[(base, b)][k] for b in budgets], mlsd,
                                [boot_fd[(name, b)][k] for b in mq.budget], saturation, limit), keep)
            for k in range(n_boot)]
    n_reps = min((len(lsd_repeats[(name, b)]) for b in mq.budget), default=0) if lsd_repeats else 0
    reps, lsd_reps = [], []
    for r in range(n_reps):
        rows = speedups(budgets, bv, [lsd_repeats[(name, b)][r] for b in mq.budget], mv, saturation, limit)
        reps.append(_with_mean(rows, keep))
        lsd_reps.append([x.lsd for x in rows])

    def stack(parts):
        if not parts:
            return np.full((0, len(point) + 1), np.nan), np.full((0, len(point) + 1), POINT)
        return np.array([p[0] for p in parts], float), np.array([p[1] for p in parts], object)

    return _Curve(name, base, point, mean_speedup(point), stack(boot), stack(reps),
                  np.array(lsd_reps, float).reshape(n_reps, len(point)))


def _span(values: np.ndarray, low=2.5, high=97.5) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    return (float(np.percentile(v, low)), float(np.percentile(v, high))) if len(v) else (math.nan, math.nan)


def _fraction(c: _Curve, oracle: _Curve | None, i: int) -> dict:
    """The accelerator's speedup as a fraction of its oracle's, column i (a budget, or the mean last),
    with its bootstrap interval: the resamples are paired, so the ratio is taken per resample."""
    if oracle is None:
        return {}
    mean = i == len(c.rows)
    sm, bm = (c.mean.value, c.mean.bound) if mean else (c.rows[i].speedup, c.rows[i].bound)
    so, bo = (oracle.mean.value, oracle.mean.bound) if mean else (oracle.rows[i].speedup, oracle.rows[i].bound)
    lo, hi = _span(c.boot[0][:, i] / oracle.boot[0][:, i]) if len(c.boot[0]) == len(oracle.boot[0]) else (
        math.nan, math.nan)
    return dict(oracle_speedup=so, oracle_bound=bo, of_oracle=sm / so, of_oracle_bound=ratio_bound(bm, bo),
                of_oracle_ci_low=lo, of_oracle_ci_high=hi)


def _records(c: _Curve, oracle: _Curve | None) -> list[dict]:
    out = []
    for i, r in enumerate(c.rows + [c.mean]):
        mean = isinstance(r, MeanSpeedup)
        ci, nr = _span(c.boot[0][:, i]), _span(c.reps[0][:, i], 0, 100)
        lsd_n = _span(c.lsd_reps[:, i], 0, 100) if not mean else (math.nan, math.nan)
        out.append(dict(method=c.name, baseline=c.baseline, row="mean" if mean else "budget",
                        budget=math.nan if mean else r.budget,
                        over=", ".join(f"{b:g}" for b in r.budgets) if mean else "",
                        baseline_quality=math.nan if mean else r.baseline_quality,
                        lsd=math.nan if mean else r.lsd, lsd_n_low=lsd_n[0], lsd_n_high=lsd_n[1],
                        bound=r.bound, speedup=r.value if mean else r.speedup, ci_low=ci[0], ci_high=ci[1],
                        n_low=nr[0], n_high=nr[1], excluded="" if mean else r.excluded, **_fraction(c, oracle, i)))
    return out


def speedup_table(q: pd.DataFrame, methods, boot=None, boot_fd=None, saturation=0.05, lsd_repeats=None,
                  meaningful_max: float | None = None, n_boot: int = 100) -> pd.DataFrame:
    """Speedup at equal quality of every method that declares the solver it wraps (`wraps`), one row
    per budget and one mean row per method.

    q: the primary metric's rows (method, budget, lsd, value; task). boot_fd: (method, budget) -> the
    metric under each paired bootstrap resample; the first `n_boot` are used (`boot`, the resampled
    indices, only for their count). lsd_repeats: (method, budget) -> the cell's LSD under each latency
    repeat; without it there is no N range. meaningful_max: the worst baseline quality at which samples are
    still usable (the task's `meaningful_max`); None: no threshold.
    A method named `<name>-oracle` is the ceiling of `<name>`: its rows also give the fraction of it.
    """
    task = q.task.iloc[0] if "task" in q.columns and len(q) else None
    n_boot = min(n_boot, len(boot) if boot is not None else n_boot) if boot_fd else 0
    curves = {}
    for m in methods:
        base = getattr(m, "wraps", None)
        bq = q[q.method == base].sort_values("budget")
        mq = q[q.method == m.name].sort_values("budget")
        if base is None or bq.empty or len(mq) < 2:
            continue
        curves[m.name] = _curve(m.name, base, bq, mq, boot_fd, n_boot, lsd_repeats, saturation, meaningful_max)
    limited = meaningful_max is not None and math.isfinite(meaningful_max)
    rule = (f"a budget is left out of the mean when the baseline's quality is worse than {meaningful_max:g} (not "
            f"meaningful on {task}: samples are not usable)" if limited else
            f"no quality threshold is set for {task}") + (
        f", or when it has saturated (its next budget improves it by < {saturation:.0%})")
    records = []
    for name, c in curves.items():
        oracle = curves.get(f"{name}-oracle")
        records += _records(c, oracle if oracle is not None and oracle.baseline == c.baseline else None)
    return pd.DataFrame(records).assign(rule=rule) if records else pd.DataFrame()


def at_dot_ratio(results: pd.DataFrame, speedup_rows: pd.DataFrame, dot_ratio: float,
                 meaningful_max: float | None = None, saturation: float = 0.05) -> dict[str, str]:
    """Each method's speedups (per budget and mean) over the solver it wraps, read from a finished run's
    results.csv and speedup.csv with its Dot calls priced at `dot_ratio` instead of the N the run measured:
    LSD + nfe_dot (1/dot_ratio - 1/N). Why: N moves with the machine's load, so speedups of runs made at
    different times compare only at one N; FDs and call counts do not depend on it."""
    metric = speedup_rows["metric"].iloc[0]
    cell = lambda m, name: results[(results.method == m) & (results.metric == name)].set_index("budget")  # noqa: E731
    out = {}
    for method, baseline in speedup_rows[["method", "baseline"]].drop_duplicates().values:
        q, base = cell(method, metric).sort_index(), cell(baseline, metric).sort_index()
        lsd = q["lsd"].copy()
        dots, measured = cell(method, "nfe_dot"), cell(method, "lsd")["N"]  # the run's N sits on its "lsd" rows
        if not dots.empty:
            lsd += dots["value"].reindex(q.index).fillna(0) * (1 / dot_ratio - 1 / measured.reindex(q.index))
        rows = speedups(base.index.values, base["value"].values, lsd.values, q["value"].values, saturation,
                        meaningful_max)
        mean = mean_speedup(rows)
        average = speedup_text(mean.value, mean.bound, unit="×") + (", bounds both ways" if mean.bound == NO_BOUND
                                                                      else "")
        out[method] = " / ".join(f"{r.bound}{r.speedup:.2f}×" for r in rows) + f" (mean {average}) over {baseline}"
    return out


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    from baselines.tasks import TASKS

    p = argparse.ArgumentParser(description="Speedups of finished runs at one Dash/Dot latency ratio N (see "
                                "at_dot_ratio), so runs swept under different loads compare.")
    p.add_argument("runs", nargs="+", type=Path, help="run folders, each with results.csv and speedup.csv")
    p.add_argument("--dot-ratio", type=float, required=True, help="the N to price every Dot call at")
    p.add_argument("--meaningful-max", type=float, default=None, help="the worst baseline quality a budget counts "
                   "in the mean at (default: the run's task's meaningful_max, as evaluate.run used it)")
    args = p.parse_args(argv)
    for run in args.runs:
        if not (run / "results.csv").exists() or not (run / "speedup.csv").exists():
            print(f"{run}: no results.csv and speedup.csv; run evaluate.run with a baseline first")
            return 2
        results = pd.read_csv(run / "results.csv")
        limit = args.meaningful_max
        if limit is None and "task" in results.columns and results["task"].iloc[0] in TASKS:
            limit = TASKS[results["task"].iloc[0]].meaningful_max
        for method, text in at_dot_ratio(results, pd.read_csv(run / "speedup.csv"), args.dot_ratio, limit).items():
            print(f"{run} {method}: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
