"""The noise schedule as a function of (possibly fractional) discrete time t."""

import torch


def alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar at t; fractional t (Karras-type schedulers) interpolates log sigma like diffusers."""
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(alphas_cumprod) - 1)
    ac = alphas_cumprod.to(torch.float64)
    log_sigma = 0.5 * torch.log((1 - ac) / ac)
    lo = t.floor().long()
    hi = t.ceil().long()
    w = t - lo
    ls = (1 - w) * log_sigma[lo] + w * log_sigma[hi]
    return 1.0 / (1.0 + torch.exp(2 * ls))
