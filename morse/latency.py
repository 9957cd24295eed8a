"""The Dash/Dot latency ratio N that converts Dot steps into LSD, measured, never assumed."""

import time

import torch


@torch.inference_mode()
def time_forward(fn, repeats: int = 10, warmup: int = 2, device="cpu") -> float:
    """Median seconds of fn(); CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def dash_dot_times(dash, dot, shape, batch_size, repeats=10, device="cpu", dtype=torch.float32):
    """Interleaved median forward times (s) of Dash and Dot at one batch size."""
    x = torch.randn(batch_size, *shape, device=device, dtype=dtype)
    t = torch.full((batch_size,), 500, device=device)
    dash_t, dot_t = [], []
    for _ in range(max(1, repeats // 5)):
        dash_t.append(time_forward(lambda: dash(x, t), 5, 1, device))
        dot_t.append(time_forward(lambda: dot(x, x, x, t, t + 100), 5, 1, device))
    return sorted(dash_t)[len(dash_t) // 2], sorted(dot_t)[len(dot_t) // 2]


def flops_per_image(fn, batch_size: int = 1) -> float:
    """FLOPs of one forward per image, from torch's FLOP counter (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / batch_size
