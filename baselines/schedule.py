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


def x0_from_eps(alphas_cumprod: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """The clean-image estimate an epsilon gives at (x, t): (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar); t a
    time, or one per sample."""
    a = alpha_bar(alphas_cumprod, torch.as_tensor(t).to(alphas_cumprod.device)).to(x)
    a = a.reshape(-1, *[1] * (x.ndim - 1)) if a.ndim else a
    return (x - (1 - a).sqrt() * eps) / a.sqrt()
