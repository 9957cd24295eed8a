"""PFDiff (Wang et al., ICLR 2025, "PFDiff: Training-free Acceleration of Diffusion Models Combining Past and
Future Scores"): DDIM on a grid finer than the budget, one Dash call per step of the coarse path.

On a DDIM grid t_0 > t_1 > ... > t_M (M steps, the last to alpha_bar = 1), from x at grid point a:
* past score as a springboard: x' = DDIM(x, eps_past, t_a -> t_{a+h}), no call;
* future score: eps_f = eps(x', t_{a+h}), one call;
* foresight update: x <- DDIM(x, eps_f, t_a -> t_{a+k+1}); eps_f becomes the past score.
The first step is plain DDIM (no past score yet), as is a last step that only one grid step is left for. So
`budget` calls cover M = 1 + (budget - 1)(k + 1) grid steps: NFE equals the budget. PFDiff-k_h in the paper's
naming; `k` = 1, `h` = 1 is its PFDiff-1.

Written from the paper and the authors' MIT-licensed research code (github.com/onefly123/PFDiff, not a package),
on our loop: the coarse path is our DDIM scheduler on the visited grid points (a custom timestep list, each step
landing on the next entry), and the estimate it is handed at t_a is eps_f, the score at the springboard. Wraps
DDIM only: the paper's DPM-Solver variants keep their own multistep history of future scores, which diffusers'
DPM-Solver++ would mix with its own.

Setting: k = 1, h = 1 (PFDiff-1), the lower FD-fmnist at 4 and 8 calls than k = 2, h = 1 on held-out seeds
100000-100199 (README: "DeepCache, PFDiff, Align Your Steps, ...").
"""

import torch

from baselines.accelerators.common import knobs_from
from baselines.methods import Network, dash_networks
from baselines.registry import get_baseline
from baselines.schedule import alpha_bar, x0_from_eps
from baselines.solvers import DEFAULT_SPACING, traced_solve


class PFDiff:
    name, wraps = "pfdiff", "ddim"

    def __init__(self, k: int = 1, h: int = 1):
        if not 1 <= h <= k:
            raise ValueError(f"pfdiff: need 1 <= h <= k, got k={k}, h={h}")
        self.solver, self.k, self.h = get_baseline("ddim"), k, h

    def config(self) -> dict:
        return dict(name=self.name, solver=self.solver.config(), k=self.k, h=self.h)

    def networks(self, denoiser) -> dict[str, Network]:
        return dash_networks(denoiser)

    def visits(self, calls: int) -> list[tuple[int, int]]:
        """(grid index a, springboard index a + h or None) for each call, on a grid of 1 + (calls - 1)(k + 1)
        steps."""
        steps = 1 + (calls - 1) * (self.k + 1)
        out, a = [(0, None)], 1
        while a < steps:
            advance = min(self.k + 1, steps - a)
            out.append((a, a + min(self.h, advance - 1) if advance > 1 else None))
            a += advance
        return out

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, callback=None, spacing=DEFAULT_SPACING):
        calls = int(self.solver.steps_for_budget(budget))
        visits = self.visits(calls)
        grid = self.solver.make_scheduler(denoiser.schedule_config, 1 + (calls - 1) * (self.k + 1), noise.device,
                                          spacing).timesteps.tolist()
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, len(visits), noise.device, spacing,
                                               timesteps=[grid[a] for a, _ in visits])
        alphas = denoiser.alphas_cumprod.cpu()
        past = {}

        def estimate(x, t, i):
            board = visits[i][1]
            if board is None:
                eps = denoiser(x, t, cond)
            else:
                x0 = x0_from_eps(alphas, x, past["eps"], float(t))
                s = grid[board]
                a_s = alpha_bar(alphas, torch.as_tensor(float(s))).to(x)
                eps = denoiser(a_s.sqrt() * x0 + (1 - a_s).sqrt() * past["eps"], torch.as_tensor(s, device=x.device),
                               cond)
            past["eps"] = eps
            return eps

        return traced_solve(scheduler, estimate, noise, {"dash": denoiser.net}, seeds, self.solver.step_kwargs,
                            callback)


def pfdiff(k: int = 1, h: int = 1):
    """`--method-options pfdiff_k=K,pfdiff_h=H` override the knobs (a sweep's)."""
    return lambda ctx: PFDiff(**knobs_from(ctx, "pfdiff", dict(k=k, h=h)))
