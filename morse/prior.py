"""What a Dot step starts from before anything is learnt: the prior.

* "reuse": z_s, the Dash's last estimate (the paper's residual base).
* "extrap": the line through the last two Dash estimates, continued in lambda = log(alpha / sigma):

      z_i = z_s + (z_s - z_s') (lambda_i - lambda_s) / (lambda_s - lambda_s')

  where there is no earlier anchor s' (the first group) it is z_s. Why lambda: DDIM and DPM-Solver are exact
  for an estimate that is constant in lambda, so the first-order change of epsilon along the path is measured
  in it; why epsilon and not x0: on these long gaps x0's line overshot (issue 30's probe).

On the embedded default's Morse schedules the "extrap" prior alone beats the trained reuse Dot from 6 LSD up.
It suits solvers that consume one fresh estimate per step (DDIM, DDPM); a multistep solver (DPM-Solver++(2M))
already extrapolates its own history, and feeding it extrapolated estimates diverged.
"""

import torch

PRIORS = ("reuse", "extrap")


def log_snr(alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """lambda(t) = log(alpha_t / sigma_t) of a discrete schedule, in float64, at (rounded) timesteps t."""
    ac = alphas_cumprod.to(torch.float64)
    idx = torch.as_tensor(t, device=ac.device).round().long().clamp(0, len(ac) - 1)
    return 0.5 * (ac[idx].log() - (1 - ac[idx]).log())


def prior(kind: str, z_s, t_i, t_s, prev, alphas_cumprod):
    """The prior's estimate at t_i; `prev` is the anchor before s as (x_ts', z_s', t_s'), or None."""
    if kind == "reuse" or prev is None:
        return z_s
    if kind != "extrap":
        raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")
    _, z_p, t_p = prev
    # A training batch marks "no earlier anchor" by t_s' = t_s (the first group): reuse there, not 0 / 0.
    slope = extrapolation_slope(alphas_cumprod, t_i, t_s, t_p).to(z_s.device).nan_to_num(0.0).to(z_s.dtype)
    if slope.ndim:  # one time per sample (training batches)
        slope = slope.reshape(-1, *([1] * (z_s.ndim - 1)))
    return z_s + (z_s - z_p) * slope


def extrapolation_slope(alphas_cumprod, t_i, t_s, t_p) -> torch.Tensor:
    """(lambda_i - lambda_s) / (lambda_s - lambda_s'), in float64: how far past the last Dash step the line through
    the last two estimates is continued, in units of the gap between them (NaN where t_s' = t_s, no earlier anchor).
    """
    lam_i, lam_s, lam_p = (log_snr(alphas_cumprod, t) for t in (t_i, t_s, t_p))
    gap = lam_s - lam_p
    return torch.where(gap != 0, (lam_i - lam_s) / torch.where(gap != 0, gap, 1.0), torch.nan)
