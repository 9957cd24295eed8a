"""How long and how many FLOPs one forward of a network takes: the measurements behind every latency
ratio (evaluate.cost prices methods with them, morse.latency measures the Dot's N for its card)."""

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


def flops_per_image(fn, batch_size: int = 1) -> float:
    """FLOPs of one forward per image, from torch's FLOP counter (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / batch_size
