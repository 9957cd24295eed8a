"""The Morse sampler: any solver that consumes epsilon once per step, fed by Dash and Dot.

    t_i a jump step:  z_i = Dash(x_ti, t_i)                         (anchor: x_ts, z_s, t_s)
    otherwise:        z_i = z_s + Dot(x_ti, x_ts, z_s, t_i, t_s)    (residual feedback)

The solver's update rule is untouched: it takes z_i as if the model had produced it, so
multistep solvers keep Dot outputs in their history. With classifier-free guidance the Dot
corrects the guided estimate (one Dot call per step, not two): z_s is already guided, and the
conditional branch's condition (as the Denoiser hands it to the network: SDXL's added conditioning,
LCM's guidance embedding included) passes through to the shared body.

A plan may take a Dot of its own, `plan_dots[k]` for the plans with k Dash steps (one budget each on the embedded
default: 2 LSD has one Dash step, 4 LSD three): a Dot shared by every plan fits the few groups of the low budgets
poorly, where the whole sample rests on them (issue 30, ablation row distill-2lsd: the 2-LSD plan's one group reaches
FD 45.89 when it has the Dot to itself, against 81.37 with the shared one). Every plan Dot has the shared one's
layers, so the price of a Dot step, 1/N, is the same.
"""

import torch

from baselines.noise import stream_generators
from baselines.schedule import x0_from_eps
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod, traced_solve
from morse.dot import DETAIL_SIGMA, blur, detail
from morse.interleave import Interleave
from morse.prior import prior


def dot_condition(denoiser, cond, x):
    """The condition the Dash sees on its conditional branch, for the Dot (denoisers without guidance or
    structured conditions, such as tests' exact ones, pass `cond` as it is)."""
    prepare = getattr(denoiser, "condition", None)
    return prepare(cond, x) if prepare is not None else cond


# A stochastic Dot's noise: a stream of each sample's own, apart from the initial noise and the solver's steps.
DOT_STREAM = 2 << 40


class Morse:
    calls_dot = True  # False for the variants that only price the Dot's steps (oracle, formula)

    def __init__(self, solver: SchedulerMethod, dot, dot_ratio: float, interleave: Interleave | None = None,
                 plan_dots: dict | None = None):
        if solver.evals_per_step != 1:
            raise ValueError(f"morse wraps solvers that take one estimate per step; {solver.name} takes "
                             f"{solver.evals_per_step}")
        self.solver, self.dot, self.dot_ratio = solver, dot, float(dot_ratio)
        self.plan_dots = dict(plan_dots or {})
        self.interleave = interleave or Interleave()
        self.name = "morse" if solver.name == "ddim" else f"morse-{solver.name}"

    def config(self) -> dict:
        """What the samples depend on; the variants that never call the Dot leave its config out, so their cache
        entries serve every Dot with the same plans."""
        dot = dict(dot=vars(self.dot.config)) if self.calls_dot else {}
        if self.calls_dot and self.plan_dots:
            dot["plan_dots"] = {str(k): vars(d.config) for k, d in sorted(self.plan_dots.items())}
        return dict(name=self.name, solver=self.solver.config(), dot_ratio=self.dot_ratio,
                    dots_per_dash=self.interleave.dots_per_dash, **dot)

    @property
    def wraps(self) -> str:
        """The solver Morse accelerates: its speedup is measured against this one."""
        return self.solver.name

    def plan(self, budget_lsd: float) -> list[bool]:
        return self.interleave.plan(budget_lsd, self.dot_ratio)

    def dot_for(self, jump: list[bool]):
        """The Dot a plan takes: the plan Dot for its number of Dash steps where there is one, else the shared Dot."""
        return self.plan_dots.get(sum(jump), self.dot)

    def between(self, denoiser, x_ti, t_i, anchor, cond, dot):
        """z_i at a Dot step: the Dash's last estimate plus the Dot's residual (which starts from the Dot's prior;
        `anchor["prev"]` is the anchor before, for Dots that see it; `anchor["features"]` the Dash's mid-block
        output there, for Dots that see it; a stochastic Dot draws its noise from each sample's own stream)."""
        noise = None
        if anchor.get("generators") is not None:
            noise = torch.stack([torch.randn(x_ti.shape[1:], generator=g) for g in anchor["generators"]]).to(x_ti)
        return anchor["z_s"] + dot(x_ti, anchor["x_ts"], anchor["z_s"], t_i, anchor["t_s"],
                                         dot_condition(denoiser, cond, x_ti), prev=anchor.get("prev"),
                                         features=anchor.get("features"), noise=noise)

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, callback=None,
                 spacing=DEFAULT_SPACING, network="dash"):
        """`network`: the name the trace counts the denoiser's calls under (Morse-LCM's Dash is "lcm", the
        distilled model), as for the baselines."""
        jump = self.plan(budget)
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, len(jump), noise.device, spacing)
        dot = self.dot_for(jump)
        config = getattr(dot, "config", None)
        anchor, mid = {}, []
        if getattr(config, "stochastic", False) and seeds is not None:
            anchor["generators"] = stream_generators(seeds, DOT_STREAM)

        def estimate(x_ti, t_i, i):
            if jump[i]:
                mid.clear()  # a Dot with the mid block (skip_levels 0) shares the Dash's hooks: drop its calls
                z = denoiser(x_ti, t_i, cond)
                if "z_s" in anchor:
                    anchor["prev"] = (anchor["x_ts"], anchor["z_s"], anchor["t_s"])
                anchor.update(x_ts=x_ti, z_s=z, t_s=t_i, **({"features": mid[-1]} if mid else {}))
                return z
            return self.between(denoiser, x_ti, t_i, anchor, cond, dot)

        hook = None
        if getattr(config, "dash_features", False):
            if getattr(denoiser, "guidance_scale", None) not in (None, 1, 1.0):
                raise ValueError("morse: a Dot that sees the Dash's mid-block features needs an unguided task (one "
                                 "Dash forward per step); train one without --dash-features")
            hook = denoiser.net.mid_block.register_forward_hook(lambda m, a, out: mid.append(out))
        try:
            return traced_solve(scheduler, estimate, noise, {network: denoiser.net, "dot": dot}, seeds,
                                self.solver.step_kwargs, callback, labels=[network if j else "dot" for j in jump])
        finally:
            if hook is not None:
                hook.remove()


class MorseOracle(Morse):
    """Morse with an exact Dot: the Dash itself at the Dot steps, charged as the Dot (1/N LSD).

    The same schedules as Morse, so it is the ceiling of each one: what Morse would reach if its Dot
    matched the Dash at the Dot's cost. Named `<morse name>-oracle`, which reports pair with Morse.
    """

    calls_dot = False

    def __init__(self, solver: SchedulerMethod, dot, dot_ratio: float, interleave: Interleave | None = None):
        super().__init__(solver, dot, dot_ratio, interleave)
        self.name += "-oracle"

    def between(self, denoiser, x_ti, t_i, anchor, cond, dot):
        return denoiser(x_ti, t_i, cond)

    def __call__(self, denoiser, noise, budget, network="dash", **kwargs):
        x, trace = super().__call__(denoiser, noise, budget, network=network, **kwargs)
        # The Dash's hook counted the Dot steps too; charge them as the Dot calls Morse makes there
        # (one per step, guided or not). network_time_s keeps the time really spent, in the Dash.
        dot_steps = trace.networks_per_step.count("dot")
        trace.nfe[network] -= trace.nfe[network] * dot_steps / len(trace.networks_per_step)
        trace.nfe["dot"] = float(dot_steps)
        return x, trace


def _without(v, d):
    """v less its projection on d, sample by sample."""
    flat, dir_ = v.flatten(1), d.flatten(1)
    return v - ((flat * dir_).sum(1) / dir_.square().sum(1).clamp_min(1e-24)).view(-1, *[1] * (v.dim() - 1)) * d


# What a stand-in Dot's error looks like when it is not a pull towards the prior, each rescaled per sample to the
# pull's size (MorseExtrap's exact_shape): overshooting the Dash by the prior's error ("past"), the prior's error
# transposed, so of its size and texture but pointing across it ("across"), only its fine or coarse part (a blur of
# sigma 1.5 pixels splits them: "fine" is a Dot right on the coarse structure, "coarse" on the detail), or none of
# it: the Dash's estimate of x0 moved towards its own blur ("blurry": what a regression that cannot resolve the
# detail predicts), or white noise, a new draw at every step ("noise": sin(10^4 x0), deterministic in the state, so
# it does not depend on the batch), or a trained Dot's own error at that step ("dot": the Dot in use, its estimate
# minus the Dash's, so its shape at the pull's size per sample and step), and the parts of it: transposed, so no
# longer aligned with the sample ("dot-across"), its fine or coarse part ("dot-fine", "dot-coarse"), or without its
# part along the blurring direction ("dot-unblurred"). Each takes the prior's error and functions giving that x0
# estimate and the Dot's error.
ERROR_SHAPES = {
    "past": lambda e, x0, dot: -e,
    "across": lambda e, x0, dot: e.transpose(-1, -2),
    "fine": lambda e, x0, dot: detail(e),
    "coarse": lambda e, x0, dot: blur(e, DETAIL_SIGMA),
    "blurry": lambda e, x0, dot: detail(x0()),  # epsilon moved by +c d moves x0 by -c sigma / alpha d
    "noise": lambda e, x0, dot: torch.sin(1e4 * x0()),
    "dot": lambda e, x0, dot: dot(),
    "dot-across": lambda e, x0, dot: dot().transpose(-1, -2),
    "dot-fine": lambda e, x0, dot: detail(dot()),
    "dot-coarse": lambda e, x0, dot: blur(dot(), DETAIL_SIGMA),
    "dot-unblurred": lambda e, x0, dot: _without(dot(), detail(x0())),
}


class MorseExtrap(Morse):
    """Morse's schedules with the Dot replaced by the "extrap" prior (morse.prior): the last two Dash estimates
    continued linearly in log-SNR, charged as the Dot calls it stands in for (1/N LSD each).

    The ablation "what does a learned Dot add at the same cost": the committed Dot's plans and prices, nothing
    learnt. It is also a solver with free sub-steps, so its Dash NFE is worth reading beside DPM-Solver++'s.
    """

    calls_dot = False
    EXACT_GROUPS = ("first", "later")
    OPTIONS = dict(exact_groups=str, exact_mix=float, exact_shape=str, exact_floor=float)  # --method-options' types

    def __init__(self, solver: SchedulerMethod, dot, dot_ratio: float, interleave: Interleave | None = None,
                 exact_groups: str | None = None, exact_mix: float | None = None, exact_shape: str | None = None,
                 exact_floor: float | None = None, plan_dots: dict | None = None):
        """`exact_groups` (ablation): "first" or "later", the Dash instead of the formula at the Dot steps of the
        first group (no earlier anchor) or of the later ones, charged as Dot calls as the oracle's are: where
        the formula's distance to its ceiling lies. `exact_mix` (ablation) a in [0, 1]: at every Dot step the
        formula moved the share a of the way to the Dash's estimate, so a Dot whose error is exactly 1 - a of the
        prior's, all of it a pull towards the prior (where an MSE-trained Dot that cannot tell is pulled).
        `exact_shape` (ablation, with `exact_mix`): the same error size per sample, 1 - a of the prior's, in
        another shape (ERROR_SHAPES), to tell which errors the samples pay for at equal size; the dot* shapes call
        the Dot each plan samples with (its plan Dot where it has one), so its weights key the cache. `exact_floor`
        f (with `exact_mix`): an error of RMS f per value added in quadrature to that size, as a trained Dot's error
        has a floor that makes it worse than the prior where the prior is nearly exact (`morse.ablation
        --per-step`).
        With `exact_mix`, `error_sums` collects per budget the squared error and the prior's (`morse.ablation
        --stand-in-error`)."""
        super().__init__(solver, dot, dot_ratio, interleave, plan_dots)
        if exact_groups not in (None, *self.EXACT_GROUPS):
            raise ValueError(f"morse-extrap exact_groups must be one of {self.EXACT_GROUPS}, got {exact_groups!r}")
        if exact_mix is not None and (exact_groups is not None or not 0.0 <= exact_mix <= 1.0):
            raise ValueError(f"morse-extrap exact_mix must be a number in [0, 1], without exact_groups; got "
                             f"{exact_mix!r}")
        if exact_shape is not None and (exact_mix is None or exact_shape not in ERROR_SHAPES):
            raise ValueError(f"morse-extrap exact_shape must be one of {tuple(ERROR_SHAPES)}, with exact_mix; got "
                             f"{exact_shape!r}")
        if exact_floor is not None and (exact_mix is None or not exact_floor >= 0.0):
            raise ValueError(f"morse-extrap exact_floor must be a number >= 0, with exact_mix; got {exact_floor!r}")
        self.exact_groups, self.exact_mix, self.exact_shape = exact_groups, exact_mix, exact_shape
        self.exact_floor, self.error_sums, self._budget = exact_floor, {}, None
        self.calls_dot = self.shape_calls_dot(exact_shape)
        self.name += "-extrap" + (f"-exact-{exact_groups}" if exact_groups else "") + (
            f"-mix{exact_mix:g}" if exact_mix is not None else "") + (f"-{exact_shape}" if exact_shape else "") + (
            f"-floor{exact_floor:g}" if exact_floor is not None else "")

    @staticmethod
    def shape_calls_dot(exact_shape: str | None) -> bool:
        """Whether a stand-in calls the Dot (the dot* shapes): then its samples depend on the Dot, its plan Dots
        included, and its config keys the cache."""
        return (exact_shape or "").startswith("dot")

    def config(self) -> dict:
        return {**super().config(), **({"exact_groups": self.exact_groups} if self.exact_groups else {}),
                **({"exact_mix": self.exact_mix} if self.exact_mix is not None else {}),
                **({"exact_shape": self.exact_shape} if self.exact_shape else {}),
                **({"exact_floor": self.exact_floor} if self.exact_floor is not None else {})}

    def __call__(self, denoiser, noise, budget, network="dash", **kwargs):
        self._alphas_cumprod, self._exact_steps, self._budget = denoiser.alphas_cumprod, 0, float(budget)
        x, trace = super().__call__(denoiser, noise, budget, network=network, **kwargs)
        trace.nfe["dot"] = float(trace.networks_per_step.count("dot"))  # charged, as for the oracle
        if self._exact_steps:  # the Dash's hook counted the exact Dot steps too (with guidance, two calls each)
            dash_steps = trace.networks_per_step.count(network) + self._exact_steps
            trace.nfe[network] -= trace.nfe[network] * self._exact_steps / dash_steps
        return x, trace

    def between(self, denoiser, x_ti, t_i, anchor, cond, dot):
        first = anchor.get("prev") is None
        if self.exact_groups == ("first" if first else "later"):
            self._exact_steps += 1
            return denoiser(x_ti, t_i, cond)
        line = prior("extrap", anchor["z_s"], t_i, anchor["t_s"], anchor.get("prev"), self._alphas_cumprod)
        if self.exact_mix is None:
            return line
        self._exact_steps += 1
        dash = denoiser(x_ti, t_i, cond)
        error = line - dash
        if self.exact_shape is None and self.exact_floor is None:
            out = line + self.exact_mix * (dash - line)
        else:
            x0 = lambda: x0_from_eps(self._alphas_cumprod, x_ti, dash, t_i)  # noqa: E731
            dot_error = lambda: super(MorseExtrap, self).between(denoiser, x_ti, t_i, anchor, cond, dot) - dash  # noqa: E731
            shaped = ERROR_SHAPES[self.exact_shape](error, x0, dot_error) if self.exact_shape else error
            norm = lambda v: v.flatten(1).norm(dim=1)  # noqa: E731
            size = ((1 - self.exact_mix) ** 2 * norm(error) ** 2 + (self.exact_floor or 0.0) ** 2 * error[0].numel())
            out = dash + (size.sqrt() / norm(shaped).clamp_min(1e-12)).view(-1, *[1] * (error.dim() - 1)) * shaped
        sums = self.error_sums.setdefault(self._budget, [0.0, 0.0])
        sums[0] += (out - dash).double().square().sum().item()
        sums[1] += error.double().square().sum().item()
        return out
