"""DDIM that steps from each entry of its own schedule to the next, on any schedule, custom lists included.

diffusers' `DDIMScheduler.step` (0.42.1 included) takes the previous timestep as
`t - num_train_timesteps // num_inference_steps` instead of the next entry of the schedule that
`set_timesteps` built. Whenever 1000 / n is not an integer (16 steps at "trailing" spacing, Morse's
41-step grids) a step lands one or more timesteps away from where the next step believes the
sample is, and a stride that ends on t = 0 leaves the last sample noisy. Upstream issues:
huggingface/diffusers#9261, #11347, #12633. Drop this class once diffusers takes the next entry,
as its own `DDPMScheduler.previous_timestep` already does.

The contract kept from diffusers: a step at a timestep that is not in the schedule steps by
diffusers' stride as before; `step` before `set_timesteps` raises diffusers' ValueError. Added:
`set_timesteps(timesteps=[...])` takes a custom descending list (Align Your Steps), as
diffusers' DDPM, Euler and DPM-Solver schedulers do and its DDIM does not.
"""

import inspect
from contextlib import contextmanager, nullcontext

import diffusers
import torch


class DDIMScheduler(diffusers.DDIMScheduler):
    def __init__(self, *args, next_entry: bool = True, **kwargs):
        if not next_entry:
            raise ValueError("baselines.ddim.DDIMScheduler always steps to the next schedule entry; "
                             "use diffusers.DDIMScheduler for its t - T // n step")
        super().__init__(*args, **kwargs)
        # Written into a saved config, so that diffusers' own class, loading it, warns that `next_entry` is not one of
        # its attributes instead of silently giving back the step this class fixes.
        self.register_to_config(next_entry=True)

    # diffusers reads the config keys a scheduler accepts from its __init__ signature: its own, plus `next_entry`.
    __init__.__signature__ = inspect.signature(diffusers.DDIMScheduler.__init__).replace(parameters=[
        *inspect.signature(diffusers.DDIMScheduler.__init__).parameters.values(),
        inspect.Parameter("next_entry", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool)])

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list[int] | None = None):
        """diffusers' spacings, or with `timesteps` a custom list of descending integer timesteps."""
        if timesteps is None:
            return super().set_timesteps(num_inference_steps, device)
        if num_inference_steps is not None:
            raise ValueError("pass either `num_inference_steps` or `timesteps`, not both")
        steps = [int(t) for t in timesteps]
        if not steps or any(a <= b for a, b in zip(steps, steps[1:])) or steps[-1] < 0 \
                or steps[0] >= self.config.num_train_timesteps:
            raise ValueError(f"`timesteps` must be strictly descending integers in [0, "
                             f"{self.config.num_train_timesteps}), got {steps}")
        self.num_inference_steps = len(steps)
        self.timesteps = torch.tensor(steps, dtype=torch.int64, device=device)

    def previous_timestep(self, timestep) -> int:
        """The schedule entry after `timestep` (-1, alpha_bar = final_alpha_cumprod, after the last); off the
        schedule, diffusers' own t - T // n."""
        hits = (self.timesteps == timestep).nonzero()
        if len(hits) == 0:
            return int(timestep) - self.config.num_train_timesteps // self.num_inference_steps
        index = int(hits[0, 0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    @contextmanager
    def _landing_on(self, timestep):
        """Make diffusers' own update land on the next schedule entry.

        diffusers reads alpha_bar of the target only at the index it computes, t - stride (or
        `final_alpha_cumprod` when that is negative); putting the next entry's alpha_bar there for
        the duration of one call keeps diffusers' update maths (variance, eta, clipping) untouched.
        """
        target = self.previous_timestep(timestep)
        alpha_target = self.alphas_cumprod[target] if target >= 0 else self.final_alpha_cumprod
        stride_index = int(timestep) - self.config.num_train_timesteps // self.num_inference_steps
        saved = self.alphas_cumprod, self.final_alpha_cumprod
        if stride_index >= 0:
            self.alphas_cumprod = self.alphas_cumprod.clone()
            self.alphas_cumprod[stride_index] = alpha_target
        else:
            self.final_alpha_cumprod = torch.as_tensor(alpha_target)
        try:
            yield
        finally:
            self.alphas_cumprod, self.final_alpha_cumprod = saved

    # diffusers' own parameters, spelled out: the solver loop passes per-sample generators only to a
    # step whose signature names `generator`.
    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):
        # Before set_timesteps there is no schedule to land on: diffusers' step raises its own ValueError.
        landing = nullcontext() if self.num_inference_steps is None else self._landing_on(timestep)
        with landing:
            return super().step(model_output, timestep, sample, eta=eta, generator=generator,
                                use_clipped_model_output=use_clipped_model_output,
                                variance_noise=variance_noise, return_dict=return_dict)
