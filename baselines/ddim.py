"""DDIM that steps from each entry of its own schedule to the next.

diffusers' `DDIMScheduler.step` (0.42.1 included) takes the previous timestep as
`t - num_train_timesteps // num_inference_steps` instead of the next entry of the schedule that
`set_timesteps` built. Whenever 1000 / n is not an integer (16 steps at "trailing" spacing, Morse's
41-step grids) a step lands one or more timesteps away from where the next step believes the
sample is, and a stride that ends on t = 0 leaves the last sample noisy. Upstream issues:
huggingface/diffusers#9261, #11347, #12633. Drop this class once diffusers takes the next entry,
as its own `DDPMScheduler.previous_timestep` already does.
"""

from contextlib import contextmanager

import diffusers
import torch


class DDIMScheduler(diffusers.DDIMScheduler):
    def previous_timestep(self, timestep) -> int:
        """The schedule entry after `timestep`; -1 (alpha_bar = final_alpha_cumprod) after the last."""
        index = int((self.timesteps == timestep).nonzero()[0, 0])
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
        with self._landing_on(timestep):
            return super().step(model_output, timestep, sample, eta=eta, generator=generator,
                                use_clipped_model_output=use_clipped_model_output,
                                variance_noise=variance_noise, return_dict=return_dict)
