"""Model wrappers: turn any parameterisation (epsilon, v, x0; UNet2DModel or
UNet2DConditionModel; with or without classifier-free guidance) into one epsilon denoiser."""

import torch
from diffusers import DDPMScheduler
from torch import nn

from baselines.schedule import alpha_bar

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class Denoiser(nn.Module):
    """eps(x, t, cond) from a network predicting `prediction_type`.

    `schedule_config` is the training noise schedule (diffusers scheduler config keys); every
    solver builds its scheduler from it. `net` is the instrumented network (its forward calls are counted as NFE). With
    `guidance_scale != 1` and an `uncond` embedding, the unconditional and conditional
    branches run as one batch of 2B rows, so NFE counts the guidance cost honestly.
    """

    def __init__(self, net: nn.Module, schedule_config: dict, guidance_scale: float = 1.0,
                 uncond: torch.Tensor | None = None):
        super().__init__()
        prediction_type = schedule_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.net = net
        self.schedule_config = dict(schedule_config)
        self.register_buffer("alphas_cumprod", DDPMScheduler(**self.schedule_config).alphas_cumprod,
                             persistent=False)
        self.prediction_type = prediction_type
        self.guidance_scale = guidance_scale
        self.uncond = uncond

    def _call_net(self, x, t, cond):
        if cond is None:
            out = self.net(x, t)
        elif getattr(getattr(self.net, "config", None), "cross_attention_dim", None) is not None:
            out = self.net(x, t, encoder_hidden_states=cond)
        else:
            out = self.net(x, t, class_labels=cond)
        return out.sample if hasattr(out, "sample") else out

    def raw(self, x, t, cond=None):
        """The network's output in its own parameterisation, with guidance applied."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0]) if torch.as_tensor(t).ndim == 0 else t
        if self.guidance_scale == 1.0 or cond is None:
            return self._call_net(x, t, cond)
        uncond = self.uncond.expand_as(cond) if self.uncond.shape[0] == 1 else self.uncond
        out_u, out_c = self._call_net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond])).chunk(2)
        return out_u + self.guidance_scale * (out_c - out_u)

    def forward(self, x, t, cond=None):
        out = self.raw(x, t, cond)
        if self.prediction_type == "epsilon":
            return out
        ab = alpha_bar(self.alphas_cumprod.cpu(), torch.as_tensor(t).cpu()).to(x.device, x.dtype)
        ab = ab.reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * out + (1 - ab).sqrt() * x
        return (x - ab.sqrt() * out) / (1 - ab).sqrt()
