"""Learning-rate factors: the loop sets each step's rate to `lr * factor(step)`."""

import math
from collections.abc import Callable


def warmup_constant(warmup: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup` steps (step s at (s + 1) / warmup), then 1."""
    return lambda step: (step + 1) / warmup if step < warmup else 1.0


def warmup_cosine(steps: int, warmup: int = 100, floor: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up over `warmup` steps, then cosine decay from 1 to `floor` at step `steps`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor
