import math

import numpy as np
import pytest

from evaluate.speedup import lsd_for_quality, mean_speedup, saturated_budgets, speedups


def power_law(lsd, a=100.0, p=1.5):
    return a * np.asarray(lsd, float) ** -p


def test_exact_power_law_recovers_known_speedup():
    # Baseline quality = Morse's quality at half the budget: every speedup is exactly 2.
    budgets = [4, 8, 16]
    morse_lsd = [1, 2, 3, 4, 6, 8, 12, 16]
    rows = speedups(budgets, power_law(np.array(budgets) / 2), morse_lsd, power_law(morse_lsd), saturation=0)
    assert [r.status for r in rows] == ["ok"] * 3
    assert all(math.isclose(r.speedup, 2.0, rel_tol=1e-9) for r in rows)
    assert math.isclose(mean_speedup(rows), 2.0)


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


def test_out_of_range_targets_are_not_extrapolated():
    assert lsd_for_quality([2, 4], [40, 10], 5)[1] == "above-range"
    assert lsd_for_quality([2, 4], [40, 10], 50)[1] == "below-range"
    rows = speedups([4], [5.0], [2, 4], [40, 10])
    assert math.isnan(rows[0].speedup) and math.isnan(mean_speedup(rows))


def test_saturated_budgets_flagged_and_excluded():
    flags = saturated_budgets([4, 8, 16, 32], [20, 10, 9.9, 9.85], 0.05)
    assert flags == [False, True, True, True]
    rows = speedups([4, 8, 16, 32], [20, 10, 9.9, 9.85], [1, 2, 4, 8, 16, 32], [80, 40, 20, 10, 9.8, 9.7])
    assert [r.status for r in rows] == ["ok", "saturated", "saturated", "saturated"]
    assert math.isclose(mean_speedup(rows), 4 / 4.0)


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_known_speedup_for_various_slopes(p):
    rows = speedups([3, 6, 12], power_law(np.array([1, 2, 4]), p=p), [1, 2, 4, 8, 16], power_law([1, 2, 4, 8, 16], p=p),
                    saturation=0)
    assert all(math.isclose(r.speedup, 3.0, rel_tol=1e-9) for r in rows)
