"""Per-sample seeds: sample i's noise depends only on seed i (not on batch size or device)."""

import torch

# Stochastic solver steps draw from a second stream per sample, so that adding or
# removing stochastic steps never shifts the initial noise.
_STEP_STREAM = 1 << 40


def initial_noise(seeds, shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device=device, dtype=dtype)


def step_generators(seeds) -> list[torch.Generator]:
    return stream_generators(seeds, _STEP_STREAM)


def stream_generators(seeds, offset: int) -> list[torch.Generator]:
    """One generator per sample on the stream `offset` (a multiple of 2^40 that no other stream uses)."""
    return [torch.Generator().manual_seed(int(s) + offset) for s in seeds]
