"""The Dash/Dot latency ratio N that converts Dot steps into LSD, measured, never assumed."""

import torch

from baselines.timing import time_forward


def dash_dot_times(dash, dot, shape, batch_size, repeats=10, device="cpu", dtype=torch.float32):
    """Interleaved median forward times (s) of Dash and Dot at one batch size."""
    x = torch.randn(batch_size, *shape, device=device, dtype=dtype)
    t = torch.full((batch_size,), 500, device=device)
    dash_t, dot_t = [], []
    for _ in range(max(1, repeats // 5)):
        dash_t.append(time_forward(lambda: dash(x, t), 5, 1, device))
        dot_t.append(time_forward(lambda: dot(x, x, x, t, t + 100), 5, 1, device))
    return sorted(dash_t)[len(dash_t) // 2], sorted(dot_t)[len(dot_t) // 2]
