import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from baselines.tasks.fmnist import FashionMNIST
from evaluate.speedup import (
    lsd_for_quality,
    mean_speedup,
    ratio_bound,
    saturated_budgets,
    speedup_table,
    speedups,
)


def power_law(lsd, a=100.0, p=1.5):
    return a * np.asarray(lsd, float) ** -p


def test_exact_power_law_recovers_known_speedup():
    # Baseline quality = Morse's quality at half the budget: every speedup is exactly 2.
    budgets = [4, 8, 16]
    morse_lsd = [1, 2, 3, 4, 6, 8, 12, 16]
    rows = speedups(budgets, power_law(np.array(budgets) / 2), morse_lsd, power_law(morse_lsd), saturation=0)
    assert [r.bound for r in rows] == [""] * 3
    assert all(math.isclose(r.speedup, 2.0, rel_tol=1e-9) for r in rows)
    mean = mean_speedup(rows)
    assert math.isclose(mean.value, 2.0) and mean.bound == "" and mean.budgets == budgets


def test_interpolates_in_log_log():
    # Between (2, 40) and (8, 10), quality 20 sits at LSD 4 in log-log (power law p = 1).
    lsd, status = lsd_for_quality([2, 8], [40, 10], 20)
    assert status == "ok" and math.isclose(lsd, 4.0)


def test_non_monotone_curve_uses_running_minimum():
    # The bump at LSD 6 (quality 30) is ignored: quality 10 was already reached at 4.
    lsd, _ = lsd_for_quality([2, 4, 6, 8], [40, 10, 30, 5], 10)
    assert math.isclose(lsd, 4.0)
    lsd, _ = lsd_for_quality([2, 4, 6, 8], [40, 10, 30, 5], 20)
    assert 2 < lsd < 4


def test_never_reaching_the_baseline_gives_an_upper_bound():
    # Morse's best is 10 at LSD 4; the baseline's 5 at budget 8 is out of reach: speedup < 8 / 4.
    assert lsd_for_quality([2, 4], [40, 10], 5) == (4.0, "above-range")
    (row,) = speedups([8], [5.0], [2, 4], [40, 10], saturation=0)
    assert row.bound == "<" and row.speedup == 2.0 and row.lsd == 4.0


def test_beating_the_baseline_at_the_smallest_lsd_gives_a_lower_bound():
    # Morse is at 40 with 2 LSD; the baseline's 50 at budget 3 is already beaten: speedup > 3 / 2.
    assert lsd_for_quality([2, 4], [40, 10], 50) == (2.0, "below-range")
    (row,) = speedups([3], [50.0], [2, 4], [40, 10], saturation=0)
    assert row.bound == ">" and row.speedup == 1.5


def test_mean_including_bounds_is_a_bound():
    lsd, q = [2, 4, 8], [40, 10, 5]
    # Budget 4: point (quality 20 at LSD 2*sqrt2); budget 16: never reached (< 16 / 8 = 2).
    rows = speedups([4, 16], [20, 1], lsd, q, saturation=0)
    assert [r.bound for r in rows] == ["", "<"]
    mean = mean_speedup(rows)
    assert mean.bound == "<" and math.isclose(mean.value, (4 / (2 * math.sqrt(2)) + 2) / 2)
    # Budget 1: beaten at Morse's smallest LSD (> 1 / 2); with budget 4 the mean is a lower bound.
    mean = mean_speedup(speedups([1, 4], [60, 20], lsd, q, saturation=0))
    assert mean.bound == ">" and math.isclose(mean.value, (0.5 + 4 / (2 * math.sqrt(2))) / 2)
    # Bounds both ways: the mean is bounded neither way, so no number is given.
    mean = mean_speedup(speedups([1, 16], [60, 1], lsd, q, saturation=0))
    assert mean.bound == "?" and math.isnan(mean.value)


def test_ratio_of_bounds():
    assert ratio_bound("", "") == ""
    assert ratio_bound("<", "") == "<" and ratio_bound("", ">") == "<" and ratio_bound("<", ">") == "<"
    assert ratio_bound(">", "") == ">" and ratio_bound("", "<") == ">"
    assert ratio_bound("<", "<") == "?" and ratio_bound(">", ">") == "?"


def test_saturated_budgets_flagged_and_excluded():
    flags = saturated_budgets([4, 8, 16, 32], [20, 10, 9.9, 9.85], 0.05)
    assert flags == [False, True, True, True]
    rows = speedups([4, 8, 16, 32], [20, 10, 9.9, 9.85], [1, 2, 4, 8, 16, 32], [80, 40, 20, 10, 9.8, 9.7])
    assert [r.excluded.split()[0] if r.excluded else "" for r in rows] == ["", "saturated", "saturated",
                                                                          "saturated"]
    assert mean_speedup(rows).value == 4 / 4.0 and mean_speedup(rows).budgets == [4]


def test_budgets_whose_baseline_quality_is_not_meaningful_are_excluded():
    rows = speedups([2, 4, 8], [80, 20, 9], [1, 2, 4, 8], [160, 40, 18, 8.5], saturation=0, meaningful_max=50)
    assert rows[0].excluded.startswith("not meaningful") and "80" in rows[0].excluded
    assert [r.excluded for r in rows[1:]] == ["", ""]
    assert mean_speedup(rows).budgets == [4, 8]
    assert len(mean_speedup(speedups([2, 4, 8], [80, 20, 9], [1, 2, 4, 8], [160, 40, 18, 8.5], 0)).budgets) == 3


def _q(task, curves):
    return pd.DataFrame([dict(task=task, method=m, budget=b, lsd=x, value=v)
                         for m, (budgets, lsd, vals) in curves.items()
                         for b, x, v in zip(budgets, lsd, vals, strict=True)])


# The FD-fmnist of DDIM and Morse in the committed reference report (before bounds were reported).
REFERENCE = dict(ddim=([2, 4, 8, 16], [2, 4, 8, 16], [84.22, 12.72, 5.11, 3.45]),
                 morse=([2, 4, 8, 16], [1.16, 3.47, 6.79, 15.7], [96.59, 16.17, 7.88, 5.3]))
MORSE = SimpleNamespace(name="morse", wraps="ddim")


def test_fmnist_rule_excludes_2_lsd_and_keeps_4_8_16():
    limit = FashionMNIST.meaningful_max  # the task's own threshold
    t = speedup_table(_q("fmnist", REFERENCE), [MORSE], saturation=0.05, meaningful_max=limit)
    per = t[t.row == "budget"].set_index("budget")
    assert per.loc[2].excluded.startswith("not meaningful") and limit < 84.22
    assert (per.loc[[4, 8, 16]].excluded == "").all()
    assert list(per.bound) == ["", "", "<", "<"]
    assert math.isclose(per.loc[16].speedup, 16 / 15.7)
    mean = t[t.row == "mean"].iloc[0]
    assert mean.over == "4, 8, 16" and mean.bound == "<"
    # Without a threshold no budget is "not meaningful"; a lower one leaves out more.
    assert (speedup_table(_q("other", REFERENCE), [MORSE]).excluded == "").all()
    assert speedup_table(_q("fmnist", REFERENCE), [MORSE], meaningful_max=10).excluded.str.len().gt(0).sum() == 2


def test_table_covers_any_method_that_declares_what_it_wraps():
    curves = dict(REFERENCE, cache=([2, 4, 8, 16], [1.5, 3, 6, 12], [80.0, 11.0, 4.0, 3.0]))
    t = speedup_table(_q("fmnist", curves), [MORSE, SimpleNamespace(name="cache", wraps="ddim"),
                                             SimpleNamespace(name="dpm")])
    assert set(t.method) == {"morse", "cache"}


def test_latency_repeats_widen_the_speedup_by_the_spread_of_n():
    # Exact speedup 2 at the median N; a repeat where the Dot ran slower makes Morse's LSDs 10% larger.
    budgets, lsd = [4, 8, 16], [2.0, 4.0, 8.0]
    q = _q("x", dict(ddim=(budgets, budgets, power_law([2, 4, 8])), morse=(budgets, lsd, power_law(lsd))))
    reps = {("morse", b): np.array([x, 1.1 * x, 0.95 * x]) for b, x in zip(budgets, lsd, strict=True)}
    t = speedup_table(q, [MORSE], saturation=0, lsd_repeats=reps)
    per = t[t.row == "budget"]
    assert np.allclose(per.speedup, 2) and np.allclose(per.n_low, 2 / 1.1) and np.allclose(per.n_high, 2 / 0.95)
    assert np.allclose(per.lsd_n_low, 0.95 * np.array(lsd)) and np.allclose(per.lsd_n_high, 1.1 * np.array(lsd))
    mean = t[t.row == "mean"].iloc[0]
    assert math.isclose(mean.n_low, 2 / 1.1) and math.isclose(mean.n_high, 2 / 0.95)
    assert speedup_table(q, [MORSE], saturation=0).n_low.isna().all()  # no repeats, no N range


def test_bootstrap_interval_counts_out_of_range_resamples_with_their_bound():
    budgets, lsd = [4, 8], [2.0, 4.0]
    q = _q("x", dict(ddim=(budgets, budgets, [20.0, 10.0]), morse=(budgets, lsd, [20.0, 10.0])))
    # Resample 0 equals the point (speedup 2); in resample 1 the baseline is out of Morse's reach at
    # budget 8 (quality 5 < 10): an upper bound of 8 / 4.
    boot_fd = {("ddim", 4): [20, 20], ("ddim", 8): [10, 5], ("morse", 4): [20, 20], ("morse", 8): [10, 10]}
    t = speedup_table(q, [MORSE], [0, 1], boot_fd, saturation=0)
    per = t[t.row == "budget"].set_index("budget")
    assert per.loc[8].ci_low == pytest.approx(2.0) and per.loc[8].ci_high == pytest.approx(2.0)
    boot_fd[("ddim", 8)] = [10, 40]  # now beaten at Morse's smallest LSD: > 8 / 2 = 4
    per = speedup_table(q, [MORSE], [0, 1], boot_fd, saturation=0).set_index("budget")
    assert per.loc[8].ci_low == pytest.approx(2 + 0.025 * 2) and per.loc[8].ci_high == pytest.approx(4 - 0.025 * 2)


def test_fraction_of_the_oracle():
    # The oracle reaches Morse's quality at a quarter of the LSD: at budgets 8 and 16 Morse's speedup
    # is a quarter of the oracle's 8; at budget 32 Morse never gets there (<), the oracle does.
    budgets, lsd = [8, 16, 32], [4.0, 8.0, 16.0]
    base = power_law([4, 8, 20])
    # The oracle reaches further (32 where Morse stops at 16): it meets quality 20 at 2 * sqrt(2.5) LSD.
    curves = dict(ddim=(budgets, budgets, base), morse=(budgets, lsd, power_law(lsd)),
                  **{"morse-oracle": (budgets, [1.0, 2.0, 4.0], power_law([4, 8, 32]))})
    oracle = SimpleNamespace(name="morse-oracle", wraps="ddim")
    t = speedup_table(_q("x", curves), [MORSE, oracle], saturation=0)
    m = t[(t.method == "morse") & (t.row == "budget")]
    assert np.allclose(m.oracle_speedup, [8, 8, 32 / (2 * math.sqrt(2.5))]) and list(m.oracle_bound) == ["", "", ""]
    assert np.allclose(m.of_oracle[:2], 0.25) and list(m.of_oracle_bound) == ["", "", "<"]
    assert math.isclose(m.of_oracle.iloc[2], (32 / 16) / (32 / (2 * math.sqrt(2.5))))
    assert t[t.method == "morse-oracle"].of_oracle.isna().all()


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_known_speedup_for_various_slopes(p):
    rows = speedups([3, 6, 12], power_law(np.array([1, 2, 4]), p=p), [1, 2, 4, 8, 16], power_law([1, 2, 4, 8, 16], p=p),
                    saturation=0)
    assert all(math.isclose(r.speedup, 3.0, rel_tol=1e-9) for r in rows)


def test_report_marks_bounds_and_exclusions(tmp_path):
    from evaluate.report import mean_lines, plot_speedup, speedup_tables

    oracle = dict(REFERENCE, **{"morse-oracle": ([2, 4, 8, 16], [1.5, 2.5, 5.5, 11], [80.0, 12.0, 4.5, 2.9])})
    t = speedup_table(_q("fmnist", oracle), [MORSE, SimpleNamespace(name="morse-oracle", wraps="ddim")],
                      meaningful_max=FashionMNIST.meaningful_max)
    short, detail = speedup_tables(t)
    assert short.loc["morse", "16"] == f"<{16 / 15.7:.2f}x" and short.loc["morse", "2"].endswith("(excl.)")
    assert short.loc["morse", "mean"].startswith("<")
    row = detail[(detail.method == "morse") & (detail.budget == "8")].iloc[0]
    assert row["LSD needed"] == ">15.7" and row["speedup"].startswith("<") and row["fraction of oracle"][0] == "<"
    (line,) = [x for x in mean_lines(t) if "**morse vs" in x]
    assert "mean speedup <" in line and "over budgets 4, 8, 16" in line and "upper bound" in line
    assert "excluded: 2 LSD: not meaningful" in line
    assert "worse than 50" in t.rule.iloc[0]
    plot_speedup(t, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").stat().st_size > 0


def test_speedups_at_one_dot_ratio_reprice_only_the_dot_calls(tmp_path, capsys):
    """evaluate.speedup --dot-ratio: at the run's own N the speedups are the run's; at a larger N the Dot's calls
    cost less, so a Dot method needs fewer LSD (its speedup rises) and a method without a Dot does not move."""
    from evaluate.speedup import at_dot_ratio, main

    budgets, n = [4.0, 8.0, 16.0], 8.0
    rows = []
    for b, fd in zip(budgets, (14.0, 6.0, 3.0), strict=True):
        rows.append(dict(method="ddim", budget=b, metric="fd_fmnist", value=fd, lsd=b, N=None))
    for m, dash, dot, fds in (("morse", (2.0, 4.0, 8.0), (6.0, 12.0, 24.0), (13.0, 5.0, 2.5)),
                              ("other", (3.0, 6.0, 12.0), (0.0, 0.0, 0.0), (13.0, 5.0, 2.5))):
        for b, d, t, fd in zip(budgets, dash, dot, fds, strict=True):
            lsd = d + t / n
            rows += [dict(method=m, budget=b, metric="fd_fmnist", value=fd, lsd=lsd, N=None),
                     dict(method=m, budget=b, metric="nfe_dot", value=t, lsd=lsd, N=None),
                     dict(method=m, budget=b, metric="lsd", value=lsd, lsd=lsd, N=n)]
    results = pd.DataFrame(rows)
    sp = pd.DataFrame(dict(method=["morse", "other"], baseline=["ddim", "ddim"], metric=["fd_fmnist"] * 2))
    same, cheaper = at_dot_ratio(results, sp, n), at_dot_ratio(results, sp, 2 * n)
    own = speedups(budgets, [14.0, 6.0, 3.0], [2.75, 5.5, 11.0], [13.0, 5.0, 2.5])
    assert same["morse"].startswith(" / ".join(f"{r.bound}{r.speedup:.2f}×" for r in own))
    assert same["other"] == cheaper["other"] and same["morse"] != cheaper["morse"]
    first = lambda text: float(text.split("×")[0].lstrip("<>"))  # noqa: E731
    assert first(cheaper["morse"].split(" / ")[1]) > first(same["morse"].split(" / ")[1])
    results.to_csv(tmp_path / "results.csv", index=False)
    sp.to_csv(tmp_path / "speedup.csv", index=False)
    assert main([str(tmp_path), "--dot-ratio", "8"]) == 0 and "morse:" in capsys.readouterr().out
    assert main([str(tmp_path / "none"), "--dot-ratio", "8"]) == 2


def test_a_mean_over_bounds_both_ways_prints_as_not_available():
    """Ahead of the baseline at the smallest budget (a lower bound) and behind it at the largest (an upper bound):
    the mean is unbounded, and the command line says so instead of printing a number."""
    from evaluate.speedup import at_dot_ratio

    rows = []
    for m, fds in (("ddim", (14.0, 6.0, 3.0)), ("morse", (10.0, 5.0, 4.0))):
        for b, fd in zip((4.0, 8.0, 16.0), fds, strict=True):
            rows += [dict(method=m, budget=b, metric="fd_fmnist", value=fd, lsd=b, N=None),
                     dict(method=m, budget=b, metric="lsd", value=b, lsd=b, N=6.0)]
    sp = pd.DataFrame(dict(method=["morse"], baseline=["ddim"], metric=["fd_fmnist"]))
    line = at_dot_ratio(pd.DataFrame(rows), sp, 6.0)["morse"]
    assert line.startswith(">") and " / <" in line and "(mean n/a, bounds both ways)" in line and "nan" not in line
