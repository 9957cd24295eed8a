"""Model wrappers: turn any parameterisation (epsilon, v, x0; UNet2DModel or
UNet2DConditionModel; with or without classifier-free guidance) into one epsilon denoiser.

A condition is what the network takes beside (x, t), one row per sample: a tensor (class labels, or
the text encoder's hidden states of a cross-attention UNet) or a `Condition`, which also carries
SDXL's added conditioning (pooled text embedding and size/crop time ids) and LCM's guidance
embedding. Solvers and Morse pass it through untouched; only this module unpacks it.
"""

from dataclasses import dataclass, fields, replace

import torch
from diffusers import DDPMScheduler
from torch import nn

from baselines.schedule import alpha_bar

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class Condition:
    """The keyword inputs of a text-conditioned `UNet2DConditionModel`, one row per sample.

    `text_embeds` and `time_ids` are SDXL's `added_cond_kwargs`; `timestep_cond` is the guidance-scale
    embedding a guidance-distilled UNet (LCM, `time_cond_proj_dim`) adds to its time embedding. Batch-1
    conditions (an unconditional embedding) broadcast with `expand`.
    """

    encoder_hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    timestep_cond: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.encoder_hidden_states.shape

    def __len__(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def _map(self, fn) -> "Condition":
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def to(self, device=None, dtype=None) -> "Condition":
        """On `device`; floating tensors also in `dtype` (a half-precision UNet rejects float32 inputs)."""
        return self._map(lambda v: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point()
                                        else None))

    def expand(self, n: int) -> "Condition":
        return self if len(self) == n else self._map(lambda v: v.expand(n, *v.shape[1:]))

    def __getitem__(self, rows) -> "Condition":
        return self._map(lambda v: v[rows])

    @staticmethod
    def cat(parts: list["Condition"]) -> "Condition":
        first = parts[0]
        return replace(first, **{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                 for f in fields(first) if getattr(first, f.name) is not None})

    def unet_kwargs(self) -> dict:
        kw = dict(encoder_hidden_states=self.encoder_hidden_states)
        if self.text_embeds is not None:
            kw["added_cond_kwargs"] = dict(text_embeds=self.text_embeds, time_ids=self.time_ids)
        if self.timestep_cond is not None:
            kw["timestep_cond"] = self.timestep_cond
        return kw


def guidance_embedding(w: float | torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """LCM's embedding of the guidance scale w (a float, or one per row), as diffusers' LCM pipelines compute it
    (of w - 1)."""
    from diffusers import LatentConsistencyModelPipeline

    w = torch.as_tensor(w, dtype=torch.float32).expand(n)
    # A static computation on the pipeline class (it does not touch `self`): the same numbers as its pipelines.
    return LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w - 1.0, embedding_dim=dim)


def _cat(a, b):
    return Condition.cat([a, b]) if isinstance(a, Condition) else torch.cat([a, b])


def _expand(cond, n):
    if isinstance(cond, Condition):
        return cond.expand(n)
    return cond.expand(n, *cond.shape[1:]) if cond.shape[0] == 1 else cond


class Denoiser(nn.Module):
    """eps(x, t, cond) from a network predicting `prediction_type`.

    `schedule_config` is the training noise schedule (diffusers scheduler config keys); every
    solver builds its scheduler from it. `net` is the instrumented network (its forward calls are
    counted as NFE).

    Guidance, scale w = `guidance_scale` (1: none):
    * classifier-free, with an `uncond` condition (batch 1 or B): u + w (c - u), the unconditional
      and conditional branches run as one batch of 2B rows, so NFE counts the guidance cost honestly;
    * embedded, for a guidance-distilled UNet (LCM; its config has `time_cond_proj_dim`): one
      pass of B rows with w's embedding as `timestep_cond`, as diffusers' LCM pipelines do.
    A call without a condition gets `uncond` where there is one (a cross-attention UNet needs
    some text), else the network's unconditional call.
    """

    def __init__(self, net: nn.Module, schedule_config: dict, guidance_scale: float = 1.0, uncond=None):
        super().__init__()
        prediction_type = schedule_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not guidance_scale >= 1.0:
            raise ValueError(f"guidance scale must be at least 1 (1: no guidance), got {guidance_scale}")
        config = getattr(net, "config", None)
        self.guidance_dim = getattr(config, "time_cond_proj_dim", None)  # LCM: guidance is an input
        if guidance_scale != 1.0 and uncond is None and self.guidance_dim is None:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs the unconditional condition "
                             "`uncond`")
        self.net = net
        self.schedule_config = dict(schedule_config)
        self.register_buffer("alphas_cumprod", DDPMScheduler(**self.schedule_config).alphas_cumprod,
                             persistent=False)
        self.prediction_type = prediction_type
        self.guidance_scale = float(guidance_scale)
        self.uncond = uncond
        self.cross_attention = getattr(config, "cross_attention_dim", None) is not None

    @property
    def classifier_free(self) -> bool:
        return self.guidance_scale != 1.0 and self.guidance_dim is None

    def condition(self, cond, like: torch.Tensor | None = None):
        """`cond` as the network sees it on the conditional branch: `uncond` in its place when absent, on
        `like`'s device and dtype, with the guidance embedding of a guidance-distilled UNet. Idempotent, so
        Morse hands the same object to the Dot and may hand it back here."""
        if cond is None:
            if self.uncond is None:
                return None
            cond = _expand(self.uncond, like.shape[0] if like is not None else len(self.uncond))
        if like is not None:
            cond = cond.to(like.device, like.dtype) if isinstance(cond, Condition) else cond.to(like.device)
        if self.guidance_dim is not None:
            if not isinstance(cond, Condition):
                cond = Condition(cond)
            if cond.timestep_cond is None:
                emb = guidance_embedding(self.guidance_scale, len(cond), self.guidance_dim)
                cond = replace(cond, timestep_cond=emb.to(cond.encoder_hidden_states.device,
                                                          cond.encoder_hidden_states.dtype))
        return cond

    def _call_net(self, x, t, cond):
        if cond is None:
            out = self.net(x, t)
        elif isinstance(cond, Condition):
            out = self.net(x, t, **cond.unet_kwargs())
        elif self.cross_attention:
            out = self.net(x, t, encoder_hidden_states=cond)
        else:
            out = self.net(x, t, class_labels=cond)
        return out.sample if hasattr(out, "sample") else out

    def raw(self, x, t, cond=None):
        """The network's output in its own parameterisation, with guidance applied."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0]) if torch.as_tensor(t).ndim == 0 else t
        unconditional = cond is None
        cond = self.condition(cond, x)
        if not self.classifier_free or unconditional:
            return self._call_net(x, t, cond)
        uncond = self.condition(_expand(self.uncond, x.shape[0]), x)
        out_u, out_c = self._call_net(torch.cat([x, x]), torch.cat([t, t]), _cat(uncond, cond)).chunk(2)
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
