"""Speedup at equal quality (the paper's headline), written here because no library has it.

For each baseline budget b with quality q_b (lower is better), find the LSD Morse needs to
reach q_b by interpolating Morse's quality-vs-LSD curve linearly in log-log space;
speedup(b) = b / LSD_morse(q_b). Morse's curve is first made monotone (running minimum over
increasing LSD: the best quality reachable within that budget), so a noisy bump cannot give
two answers. Budgets where the baseline has saturated (the next budget improves it by less
than `saturation` relatively) are flagged and left out of the average, as are targets
outside Morse's measured range (no extrapolation).
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Speedup:
    budget: float
    baseline_quality: float
    morse_lsd: float          # nan when out of range
    speedup: float            # nan when out of range
    saturated: bool
    status: str               # "ok", "saturated", "below-range", "above-range"


def monotone_curve(lsd, quality):
    order = np.argsort(lsd)
    x = np.asarray(lsd, dtype=float)[order]
    y = np.minimum.accumulate(np.asarray(quality, dtype=float)[order])
    return x, y


def lsd_for_quality(lsd, quality, target: float) -> tuple[float, str]:
    x, y = monotone_curve(lsd, quality)
    if target < y[-1]:
        return math.nan, "above-range"   # Morse never gets this good within the measured LSDs
    if target >= y[0]:
        # Morse is at least this good already at its smallest LSD: only a bound is known.
        return (x[0], "ok") if math.isclose(target, y[0]) else (math.nan, "below-range")
    k = int(np.searchsorted(-y, -target, side="left"))  # first point with y <= target
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    if y0 == y1:
        return x0, "ok"
    f = (math.log(target) - math.log(y0)) / (math.log(y1) - math.log(y0))
    return math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0))), "ok"


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


def speedups(baseline_budgets, baseline_quality, morse_lsd, morse_quality, saturation=0.05) -> list[Speedup]:
    sat = saturated_budgets(baseline_budgets, baseline_quality, saturation)
    out = []
    for b, q, s in zip(baseline_budgets, baseline_quality, sat, strict=True):
        lsd, status = lsd_for_quality(morse_lsd, morse_quality, q)
        if s:
            status = "saturated"
        out.append(Speedup(b, q, lsd, b / lsd if lsd == lsd else math.nan, s, status))
    return out


def mean_speedup(rows: list[Speedup]) -> float:
    vals = [r.speedup for r in rows if r.status == "ok"]
    return float(np.mean(vals)) if vals else math.nan


def speedup_table(q: pd.DataFrame, morse_methods, boot, boot_fd, saturation) -> pd.DataFrame:
    """Speedup at equal quality of each Morse method over the solver it wraps, with bootstrap intervals
    from the first 100 of the paired resamples the quality intervals used."""
    speed_rows = []
    for m in morse_methods:
        base = m.solver.name
        bq, mq = q[q.method == base], q[q.method == m.name]
        if bq.empty or len(mq) < 2:
            continue
        point = speedups(list(bq.budget), list(bq.value), list(mq.lsd), list(mq.value), saturation)
        boot_sp = []
        for k in range(min(len(boot), 100)):
            bv = [boot_fd[(base, b)][k] for b in bq.budget]
            mv = [boot_fd[(m.name, b)][k] for b in mq.budget]
            boot_sp.append([r.speedup for r in speedups(list(bq.budget), bv, list(mq.lsd), mv, saturation)])
        boot_sp = np.array(boot_sp) if boot_sp else np.full((1, len(point)), np.nan)
        for i, r in enumerate(point):
            col = boot_sp[:, i][np.isfinite(boot_sp[:, i])]
            speed_rows.append(dict(morse=m.name, baseline=base, budget=r.budget, baseline_fd=r.baseline_quality,
                                   morse_lsd=r.morse_lsd, speedup=r.speedup, status=r.status,
                                   ci_low=np.percentile(col, 2.5) if len(col) else math.nan,
                                   ci_high=np.percentile(col, 97.5) if len(col) else math.nan))
    return pd.DataFrame(speed_rows)
