"""The optimal denoiser of a finite data set: an exact, weight-free model for testing samplers.

For data {x_m}, x_t = sqrt(a) x0 + sqrt(1-a) eps gives
E[x0 | x_t] = sum_m softmax_m(-|x_t - sqrt(a) x_m|^2 / (2 (1-a))) x_m,
and the epsilon it implies is (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1-a).
"""

import torch
from torch import nn

from baselines.schedule import alpha_bar


class OptimalDenoiser(nn.Module):
    def __init__(self, data: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("data", data.detach().to(torch.float64).flatten(1))
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t).expand(x.shape[0]) if torch.as_tensor(t).ndim == 0 else t
        a = alpha_bar(self.alphas_cumprod.cpu(), t.cpu()).to(self.data.device)[:, None]
        xt = x.to(torch.float64).flatten(1)
        # |x_t - sqrt(a) x_m|^2 expanded; float64 keeps the softmax exact near t = 0.
        d2 = (xt.square().sum(1, keepdim=True) - 2 * a.sqrt() * xt @ self.data.T
              + a * self.data.square().sum(1)[None])
        w = torch.softmax(-d2 / (2 * (1 - a)), dim=1)
        x0 = w @ self.data
        eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        return eps.reshape(x.shape).to(x.dtype)


class GaussianDenoiser(nn.Module):
    """The optimal denoiser of Gaussian data N(mean, std^2 I), where the probability-flow ODE
    has a closed form: (x_t - sqrt(a_t) mean) / sqrt(a_t std^2 + 1 - a_t) is constant."""

    def __init__(self, mean: float, std: float, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.mean, self.std = mean, std
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64))

    def _a(self, t, n):
        t = torch.as_tensor(t).expand(n) if torch.as_tensor(t).ndim == 0 else t
        return alpha_bar(self.alphas_cumprod.cpu(), t.cpu())

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        a = self._a(t, x.shape[0]).to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        xt = x.to(torch.float64)
        x0 = self.mean + a.sqrt() * self.std**2 / (a * self.std**2 + 1 - a) * (xt - a.sqrt() * self.mean)
        return ((xt - a.sqrt() * x0) / (1 - a).sqrt()).to(x.dtype)

    def ode_solution(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Where the exact ODE carries x_t at time t to at alpha_bar = 1."""
        a = self._a(t, x_t.shape[0]).reshape(-1, *([1] * (x_t.ndim - 1)))
        z = (x_t.to(torch.float64) - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a).sqrt()
        return (self.mean + self.std * z).to(x_t.dtype)
