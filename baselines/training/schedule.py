"""Learning-rate factors: the loop sets each step's rate to `lr * factor(step)`."""

import math
from collections.abc import Callable

import torch


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


def cosine_spans(bounds: list[int]) -> Callable[[int], float]:
    """Cosine decay from 1 to 0 within each span of the ascending `bounds` (morse.train: one span over the run, or
    one per DAgger round). The cosine is taken in float32, as the committed Dots were trained with it."""

    def factor(step: int) -> float:
        lo = max(b for b in bounds[:-1] if b <= step)
        hi = min(b for b in bounds[1:] if b > lo)
        return 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - lo) / (hi - lo))).item())

    return factor
