"""Time-interleaving: which steps the Dash takes (jump steps) and which the Dot fills.

Budgets are in LSD, latency per step of Dash: a Dash step costs 1, a Dot step 1/N, where N
is the Dash/Dot latency ratio measured on the hardware in use. The paper places Dot steps
uniformly between jump steps; the knob here is `dots_per_dash`, the Dot steps that follow
each Dash step when the budget allows.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Interleave:
    dots_per_dash: int = 3

    def counts(self, budget_lsd: float, dot_ratio: float) -> tuple[int, int]:
        """(Dash steps, Dot steps) that fit the budget, Dash steps first."""
        if not budget_lsd >= 1:
            raise ValueError(f"morse: budget must be at least 1 LSD (one Dash step), got {budget_lsd}")
        if not dot_ratio > 0:
            raise ValueError(f"morse: Dash/Dot latency ratio N must be positive, got {dot_ratio}")
        # The most solver steps that fit: each Dash step may be followed by up to dots_per_dash
        # Dot steps; among equally long schedules, the one with more Dash steps.
        eps = 1e-9
        best = (1, 0)
        for n_dash in range(1, math.floor(budget_lsd + eps) + 1):
            n_dot = min(self.dots_per_dash * n_dash, math.floor(dot_ratio * (budget_lsd - n_dash) + eps))
            if n_dash + n_dot >= sum(best):
                best = (n_dash, n_dot)
        n_dash, n_dot = best
        return n_dash, n_dot

    def plan(self, budget_lsd: float, dot_ratio: float) -> list[bool]:
        """One entry per solver step: True for a Dash (jump) step. The first is always Dash."""
        n_dash, n_dot = self.counts(budget_lsd, dot_ratio)
        total = n_dash + n_dot
        jumps = {(k * total) // n_dash for k in range(n_dash)}
        return [j in jumps for j in range(total)]
