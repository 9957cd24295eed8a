"""The Dot network: eta(x_ti, x_ts, z_s, t_i, t_s), a residual added to the Dash's last estimate.

Weight sharing (paper, Sec. "Dot"): m light down-sampling blocks (a pixel-unshuffle, then
m-1 stride-2 blocks) shrink the input 4^m-fold, the Dash's own body (time embedding, down,
mid and up blocks; frozen, the very same tensors) runs on the small map, and m up-sampling
blocks with skips (the last a pixel-shuffle) bring it back. No convolution runs at full
resolution: on CPUs and at small GPU batches the Dot's speed is set by its kernel count and
its full-resolution work, not by its FLOPs. `skip_levels` leaves out the Dash's deepest
levels and mid block, which on the small map run at 2x2 or less: fewer kernels, a higher
Dash/Dot latency ratio N (embedded task, batch 64: N 4.6 with all levels, 6.3 without the
deepest, same run). LoRA adapters (peft) on the shared layers and the new blocks are all
that trains.

Fusion of the five inputs (the paper leaves it open; our choice). With alpha, sigma the Dash's
schedule and r = alpha_i / alpha_s:
* the first new block sees x_ti, x_ts, z_s, the deviation x_ti - r x_ts - (sigma_i - r sigma_s) z_s
  (zero at the first Dot step after a jump, where the solver moved with z_s alone; after it, it
  carries the earlier Dot outputs, the trend the residual continues) and the anchor's x0 estimate
  (x_ts - sigma_s z_s) / alpha_s clipped to [-1, 1]: features the stem's convolutions, blind to
  time, could not form themselves;
* the shared time embedding gets t_i; a new zero-initialised projection of the sinusoidal
  embedding of t_s is added to it, so the body knows how far back the Dash anchor lies;
* a full-resolution linear path adds a * deviation + b * x_ts + c * z_s per pixel: a, b, c are a
  zero-initialised MLP of both times (one value per channel) plus per-pixel corrections that
  the up-sampling head emits beside the residual. It costs a few element-wise operations and
  leaves the low-resolution body the content-dependent remainder;
* the sum is scaled by sqrt(alpha_bar / (1 - alpha_bar)) at t_i, clipped to [1, scale_max]:
  along a solver step the residual is that factor times the change of the x0 estimate, so near
  t = 0 the network need not emit large values itself;
* the output convolution and the MLP's last layer are zero-initialised: an untrained Dot
  returns z_s exactly.

With `residual="x0"` (Morse-LCM) the same output corrects the anchor's x0 estimate instead, unscaled,
and the Dot returns the epsilon that gives the corrected x0 at t_i; an untrained Dot then reuses the
anchor's x0 (why: `Dot.reuse`). With `clip_x0` the x0s are the clipped ones the solver uses: where the
x0 read from epsilon leaves the data range (near t = 999 it divides by sqrt(alpha_bar) = 0.006) the unclipped
values are noise the solver discards, and a loss on them would train the Dot on that noise.
"""

import copy
import json
from dataclasses import asdict, dataclass, field

import torch
import torchvision.transforms.functional as TF
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file
from torch import nn

from baselines.checkpoint import save_atomic
from baselines.denoisers import Condition
from morse.prior import PRIORS, extrapolation_slope, log_snr, prior

SHARED = ("time_proj", "time_embedding", "down_blocks", "mid_block", "up_blocks",
          "conv_norm_out", "conv_act")
# SDXL's added conditioning (pooled text embedding and size/crop ids), shared where the Dash has it.
ADDED = ("add_time_proj", "add_embedding")
BODIES = ("shared", "copy", "fresh")
# --method-options that change a trained Dot when sampling (ablations), and the DotConfig field each sets.
SAMPLING_OPTIONS = {"dot_scale": "learned_scale", "dot_blur": "learned_blur"}


@dataclass
class DotConfig:
    m: int = 2                      # down-sampling blocks; the body runs on 4^m fewer pixels
    width: int = 32                 # channels of the new blocks
    lora_rank: int = 4
    schedule: dict | None = None    # the Dash's noise schedule (DDPMScheduler kwargs); None: diffusers' default
    scale_max: float = 4.0          # cap on the output scale (larger caps made training unstable)
    skip_levels: int = 0            # deepest Dash levels (and the mid block) the Dot leaves out
    lora_targets: list[str] = field(default_factory=lambda: [
        "to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"])
    residual: str = "eps"           # where the learned residual lives: "eps" or "x0" (see Dot.forward)
    clip_x0: bool = False           # "x0" for a solver that clips x0 to [-1, 1] (LCMScheduler clip_sample): the
                                    # residual corrects the clipped anchor x0, and errors compare clipped x0s
    prior: str = "reuse"            # what an untrained Dot returns: "reuse" (z_s) or "extrap" (morse.prior)
    history: bool = False           # the Dot also sees the anchor before s (x_ts', z_s', t_s') and the prior
    trajectory: bool = True         # False (ablation): the Dot sees x_ti and t_i only, not the anchor's x_ts, z_s
    learned_scale: float = 1.0      # sampling-time factor on the learned part (ablation: is its direction right
                                    # but its size too large?); training always uses 1
    body: str = "shared"            # the Dash's layers the Dot runs: "shared" (the Dash's own tensors, frozen, LoRA
                                    # adapters trained); ablations: "copy" (a copy, fully fine-tuned, no LoRA),
                                    # "fresh" (the same layers re-initialised: an independent network of the same N)
    learned_blur: float = 0.0       # sampling-time Gaussian blur (sigma in pixels) of the learned part (ablation:
                                    # how much of the FD its fine detail costs); training always uses 0
    gate: dict | None = None        # a factor on the learned part per noise level and extrapolation slope, fitted
                                    # after training (morse.gate), and optionally one on the extrapolation
                                    # ("prior_scale"); None: 1 everywhere
    dash_features: bool = False     # the Dot also sees the Dash's mid-block output at the anchor, cached when the
                                    # Dash ran there (Clockwork-style), added at the bottom of its own body
    stochastic: bool = False        # the Dot also takes a plane of Gaussian noise per input channel, so it samples
                                    # its correction instead of regressing it (trained with morse.train --loss energy)


def _share(module: nn.Module) -> nn.Module:
    """A new module tree whose leaves are the original modules (same parameter tensors).

    peft replaces layers in the tree it is given; on this tree it wraps the Dash's own
    layers without touching the Dash, so the Dash keeps running without adapters.
    """
    if not module._modules:
        return module
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {k: (_share(v) if v is not None else None) for k, v in module._modules.items()}
    return clone


def _block(cin, cout, stride=1):
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout),
                         nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU())


def _check(config: DotConfig) -> None:
    if config.m < 1:
        raise ValueError("DotConfig.m must be at least 1")
    if config.residual not in ("eps", "x0"):
        raise ValueError(f"DotConfig.residual must be 'eps' or 'x0', got {config.residual!r}")
    if config.prior not in PRIORS:
        raise ValueError(f"DotConfig.prior must be one of {PRIORS}, got {config.prior!r}")
    if config.body not in BODIES:
        raise ValueError(f"DotConfig.body must be one of {BODIES}, got {config.body!r}")
    if config.prior != "reuse" and config.residual != "eps":
        raise ValueError("DotConfig.prior: an x0 residual starts from the anchor's x0; use prior='reuse'")


class Dot(nn.Module):
    def __init__(self, dash: nn.Module, config: DotConfig | None = None):
        super().__init__()
        self.config = config = config or DotConfig()
        dc = dash.config
        self.cross_attention = getattr(dc, "cross_attention_dim", None) is not None
        self.added = getattr(dc, "addition_embed_type", None)
        if self.added not in (None, "text_time"):
            raise ValueError(f"Dot: addition_embed_type {self.added!r} is not supported (None or SDXL's text_time)")
        if any(hasattr(b, "skip_conv") for b in list(dash.down_blocks) + list(dash.up_blocks)):
            raise ValueError("Dot: skip-type UNet blocks are not supported")
        c, body_ch = dc.in_channels, dc.block_out_channels[0]
        w = config.width

        _check(config)
        self.body = self._shared_body_layers(dash, config)
        self.inp = _block((8 if config.history else 5) * c * 4, body_ch if config.m == 1 else w)
        self.down = nn.ModuleList([_block(w, body_ch if k == config.m - 2 else w, stride=2)
                                   for k in range(config.m - 1)])
        self.up = nn.ModuleList([_block((body_ch if k == 0 else w) + w, w) for k in range(config.m - 1)])
        # Per pixel: the residual and a content-dependent correction to the linear path's coefficients.
        self.out = nn.Conv2d(body_ch if config.m == 1 else w, 4 * 4 * dc.out_channels, 3, padding=1)
        from diffusers import DDPMScheduler

        ac = DDPMScheduler(**(config.schedule or {})).alphas_cumprod.to(torch.float64)
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        self.register_buffer("alpha", ac.sqrt().float(), persistent=False)
        self.register_buffer("sigma", (1 - ac).sqrt().float(), persistent=False)
        self.register_buffer("snr_sqrt", (ac / (1 - ac)).sqrt().clamp(1.0, config.scale_max).float(),
                             persistent=False)
        emb_in = self.body.time_embedding.linear_1.in_features
        emb_dim = self.body.time_embedding.linear_2.out_features
        self.anchor_embedding = nn.Linear(emb_in, emb_dim)
        # Only Dots that see the earlier anchor have this layer, so older checkpoints keep their exact keys.
        self.prev_embedding = nn.Linear(emb_in, emb_dim) if config.history else None
        self.linear_coeffs = nn.Sequential(nn.Linear(2 * emb_in, 4 * w), nn.SiLU(), nn.Linear(4 * w, 3 * c))
        # The Dash's mid-block output (its last level's channels) onto the channels at the bottom of the Dot's body.
        bottom = dc.block_out_channels[len(dash.down_blocks) - config.skip_levels - 1]
        self.feature_proj = nn.Conv2d(dc.block_out_channels[-1], bottom, 1) if config.dash_features else None
        # Noise enters beside the input block (not as its extra channels), so a trained deterministic Dot's weights
        # load into a stochastic one (--init). Not zero: at zero the energy score's gradient on it vanishes.
        self.noise_in = (nn.Conv2d(4 * c, body_ch if config.m == 1 else w, 3, padding=1) if config.stochastic
                         else None)
        for zero in (self.out, self.anchor_embedding, self.linear_coeffs[-1], self.prev_embedding, self.feature_proj):
            if zero is None:
                continue
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def _shared_body_layers(self, dash: nn.Module, config: DotConfig) -> nn.Module:
        """The Dash's own layers (same tensors, frozen) in a tree of their own, with LoRA adapters on that tree."""
        dc = dash.config
        body = nn.Module()
        for name in SHARED + (ADDED if self.added else ()):
            setattr(body, name, _share(getattr(dash, name)))
        if not 0 <= config.skip_levels < len(dash.down_blocks):
            raise ValueError(f"DotConfig.skip_levels must be in [0, {len(dash.down_blocks) - 1}]")
        if config.skip_levels:
            # On the 4^m-fold smaller map the deepest levels run at 2x2 or less, where they cost kernel
            # launches and carry little; the up path then starts from the last kept level's features.
            keep = len(dash.down_blocks) - config.skip_levels
            if dc.block_out_channels[keep - 1] != dc.block_out_channels[keep]:
                raise ValueError(f"DotConfig.skip_levels={config.skip_levels}: the last kept level has "
                                 f"{dc.block_out_channels[keep - 1]} channels, the up path expects "
                                 f"{dc.block_out_channels[keep]}; skip fewer levels")
            body.down_blocks = nn.ModuleList(list(body.down_blocks)[:keep])
            body.down_blocks[-1].downsamplers = None  # on the clone only: the Dash keeps its own
            body.mid_block = None
            body.up_blocks = nn.ModuleList(list(body.up_blocks)[config.skip_levels:])
        if config.body != "shared":  # the ablation of weight sharing: the body's own tensors, all trained
            body = copy.deepcopy(body).requires_grad_(True)
            for layer in body.modules() if config.body == "fresh" else ():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
            return body
        body.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank,
                                           target_modules=config.lora_targets), body)
        return body

    def train(self, mode: bool = True):
        super().train(mode)
        self.body.eval()  # the Dash's own layers are shared: never flip them into training mode
        return self

    def _embed(self, t, n, dtype):
        t = torch.as_tensor(t)
        t = t.expand(n) if t.ndim == 0 else t
        return self.body.time_proj(t.reshape(-1)).to(dtype)

    def forward(self, x_ti, x_ts, z_s, t_i, t_s, cond=None, prev=None, features=None, noise=None):
        """`cond`: the conditional branch's condition (a tensor or a `Condition`); with guidance, z_s is the
        guided estimate and one call corrects it. `prev`: the anchor before s as (x_ts', z_s', t_s'), None in the
        first group; used by Dots with `history` or the "extrap" prior. `features`: the Dash's mid-block output at
        the anchor, for Dots with `dash_features` (None: zeros, as when only timing the Dot). `noise`: a
        stochastic Dot's Gaussian planes, shaped like x_ti (None: drawn from torch's global generator; the sampler
        passes per-seed ones). Returns the residual added to z_s."""
        n, dtype = x_ti.shape[0], x_ti.dtype
        sin_i, sin_s = self._embed(t_i, n, dtype).to(x_ti.device), self._embed(t_s, n, dtype).to(x_ti.device)
        cond = Condition(cond) if self.cross_attention and isinstance(cond, torch.Tensor) else cond
        if isinstance(cond, Condition):
            cond = cond.to(x_ti.device, dtype)
        emb = self.body.time_embedding(sin_i, getattr(cond, "timestep_cond", None)) + self.anchor_embedding(sin_s)
        if self.prev_embedding is not None:
            emb = emb + self.prev_embedding(self._embed(t_s if prev is None else prev[2], n, dtype).to(x_ti.device))
        if self.added:
            emb = emb + self._added_embedding(cond, emb.dtype)
        base = self.prior_estimate(z_s, t_i, t_s, prev)
        if not self.config.trajectory:  # the ablation: the anchor's state and estimate are not shown to the Dot
            x_ts, z_s_seen = torch.zeros_like(x_ts), torch.zeros_like(z_s)
        else:
            z_s_seen = z_s
        deviation, x0_s = self.anchor_features(x_ti, x_ts, z_s_seen, t_i, t_s)
        planes = [x_ti, x_ts, z_s_seen, deviation, x0_s]
        if self.config.history:
            earlier = [*((x_ts, z_s_seen) if prev is None else prev[:2]), base]
            if not self.config.trajectory:  # nor the earlier anchor's, nor the prior made from them: else a training
                # batch (which marks the first group by the anchor itself as s') shows what sampling (no s') hides
                earlier = [torch.zeros_like(v) for v in earlier]
            planes += earlier
        if self.feature_proj is not None:
            if features is None or not self.config.trajectory:  # the anchor's features are trajectory inputs too
                features = x_ti.new_zeros(n, self.feature_proj.in_channels, 1, 1)
            features = self.feature_proj(features.to(x_ti.dtype))
        if self.noise_in is not None:
            noise = torch.randn_like(x_ti) if noise is None else noise.to(x_ti)
            noise = self.noise_in(nn.functional.pixel_unshuffle(noise, 2))
        h = self._shared_body(torch.cat(planes, dim=1), emb, cond, features, noise)
        eta, local = nn.functional.pixel_shuffle(self.out(h), 2).tensor_split([x_ti.shape[1]], dim=1)
        coeffs = self.linear_coeffs(torch.cat([sin_i, sin_s], dim=1)).reshape(n, 3, -1, 1, 1)
        a, b, c = (coeffs + local.reshape(n, 3, *x_ti.shape[1:])).unbind(1)
        raw = eta + a * deviation + b * x_ts + c * z_s_seen
        if self.config.residual == "eps":
            scaled = raw * self._at(t_i, n, x_ti)[2]
            if self.config.learned_scale != 1.0:
                scaled = scaled * self.config.learned_scale
            if self.config.gate is not None:
                scaled = scaled * self.gate_factor(t_i, t_s, prev, n, x_ti)
            if self.config.learned_blur > 0:
                scaled = blur(scaled, self.config.learned_blur)
            if self.config.prior == "reuse":
                return scaled
            if self.config.gate is not None and "prior_scale" in self.config.gate:  # fitted factors on the line
                return self.gate_factor(t_i, t_s, prev, n, x_ti, "prior_scale") * (base - z_s) + scaled
            return (base - z_s) + scaled
        # x0: raw corrects the anchor's x0 estimate; the solver still receives epsilon, the one that gives it.
        return self._eps_giving(self._x0(x_ts, z_s, t_s) + raw, x_ti, t_i) - z_s

    def _shared_body(self, planes, emb, cond, features=None, noise=None):
        """The new down blocks, the Dash's own (LoRA-adapted) body on the small map, and the new up blocks;
        `features` (projected) join at the body's bottom, `noise` (projected) after the input block."""
        extra = {"encoder_hidden_states": getattr(cond, "encoder_hidden_states", None)} if self.cross_attention else {}
        h = self.inp(nn.functional.pixel_unshuffle(planes, 2))
        if noise is not None:
            h = h + noise
        skips = [h]
        for blk in self.down:
            h = blk(h)
            skips.append(h)
        skips.pop()

        res = (h,)
        for blk in self.body.down_blocks:
            kw = extra if getattr(blk, "has_cross_attention", False) else {}
            h, r = blk(hidden_states=h, temb=emb, **kw)
            res += r
        if self.body.mid_block is not None:
            kw = extra if getattr(self.body.mid_block, "has_cross_attention", False) else {}
            h = self.body.mid_block(h, emb, **kw)
        if features is not None:  # pooled: the Dot's bottom map is 4^m times smaller than the Dash's
            h = h + nn.functional.adaptive_avg_pool2d(features, h.shape[-2:])
        for blk in self.body.up_blocks:
            r, res = res[-len(blk.resnets):], res[:-len(blk.resnets)]
            kw = extra if getattr(blk, "has_cross_attention", False) else {}
            h = blk(hidden_states=h, res_hidden_states_tuple=r, temb=emb, **kw)
        h = self.body.conv_act(self.body.conv_norm_out(h))

        for blk in self.up:
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = blk(torch.cat([h, skips.pop()], dim=1))
        return h

    def gate_cell(self, t_i, t_s, prev, n) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's (row, column) in the gate's table: the row of t_i, the column of the extrapolation slope
        to t_i (column 0: the first group, with no earlier anchor). A gate with "gap_edges" repeats the slope
        columns once per bin of the line's own length, lambda_s - lambda_s' (issue 30: a line through anchors far
        apart hardly predicts the step, so its factor cannot be the one a short line wants at the same t_i)."""
        gate = self.config.gate
        t_i, t_s = (torch.as_tensor(t, device=self.alphas_cumprod.device).expand(n) for t in (t_i, t_s))
        t_p = t_s if prev is None else torch.as_tensor(prev[2], device=t_s.device).expand(n)
        slope = extrapolation_slope(self.alphas_cumprod, t_i, t_s, t_p)
        edges = lambda key: torch.tensor(gate.get(key, []), dtype=torch.float64, device=t_i.device)  # noqa: E731
        col = torch.bucketize(slope, edges("slope_edges")) + 1
        if gate.get("gap_edges"):
            gap = log_snr(self.alphas_cumprod, t_s) - log_snr(self.alphas_cumprod, t_p)
            col = col + (len(gate["slope_edges"]) + 1) * torch.bucketize(gap.to(t_i.device), edges("gap_edges"))
        return torch.bucketize(t_i.double(), edges("t_edges")), torch.where(slope.isnan(), 0, col)

    def gate_factor(self, t_i, t_s, prev, n, like, table: str = "scale"):
        """The gate's factor for each sample, shaped to broadcast against `like`: on the learned part ("scale"; why
        a gate (morse.gate): the learned part's error has a floor, so it hurts where the prior is better than that),
        or on the extrapolation's step from z_s ("prior_scale", where fitted: morse.gate --prior-factors)."""
        row, col = self.gate_cell(t_i, t_s, prev, n)
        learnt = getattr(self, "gate_tables", None)  # morse.distill --gate-factors learn: trained with the Dot
        values = learnt[table] if learnt is not None and table in learnt else torch.tensor(self.config.gate[table])
        factor = values.to(row.device)[row, col]
        return factor.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def prior_estimate(self, z_s, t_i, t_s, prev=None):
        """What this Dot starts from at t_i (morse.prior): z_s, or the line through the last two Dash estimates."""
        return prior(self.config.prior, z_s, t_i, t_s, prev, self.alphas_cumprod)

    def reuse(self, x_ti, x_ts, z_s, t_i, t_s):
        """The estimate an untrained Dot gives: z_s itself in "eps" mode; in "x0" mode the epsilon at (x_ti, t_i)
        that yields the anchor's x0 estimate.

        Why "x0" exists: a consistency model (LCM) turns epsilon into x0 = (x - sigma eps) / alpha and re-noises
        it with fresh noise at every step, so an epsilon error reaches the next state multiplied by sigma / alpha
        (about 50 at t = 879 on the linear schedule), and successive epsilons of its path are unrelated (fresh
        noise) while its successive x0 estimates are close. There the residual must live in x0, and the loss too
        (`in_residual_space`). DDIM-like solvers move x by a bounded multiple of epsilon: "eps" suits them."""
        if self.config.residual == "eps":
            return z_s
        return self._eps_giving(self._x0(x_ts, z_s, t_s), x_ti, t_i)

    def _x0(self, x, eps, t):
        alpha, sigma, _ = self._at(t, x.shape[0], x)
        x0 = (x - sigma * eps) / alpha
        return x0.clamp(-1.0, 1.0) if self.config.clip_x0 else x0

    def _eps_giving(self, x0, x_ti, t_i):
        alpha_i, sigma_i, _ = self._at(t_i, x_ti.shape[0], x_ti)
        return (x_ti - alpha_i * x0) / sigma_i

    def in_residual_space(self, eps, x_ti, t_i):
        """An epsilon at (x_ti, t_i) where the residual lives, so errors are measured there: epsilon itself, or
        the x0 it gives (clipped with `clip_x0`)."""
        return eps if self.config.residual == "eps" else self._x0(x_ti, eps, t_i)

    def _added_embedding(self, cond, dtype):
        """SDXL's text_time embedding, as UNet2DConditionModel.get_aug_embed forms it."""
        time_embeds = self.body.add_time_proj(cond.time_ids.flatten()).reshape(cond.text_embeds.shape[0], -1)
        return self.body.add_embedding(torch.cat([cond.text_embeds, time_embeds], dim=-1).to(dtype))

    def anchor_features(self, x_ti, x_ts, z_s, t_i, t_s):
        """x_ti's deviation from the DDIM step x_ts -> t_i with z_s, and the anchor's x0 estimate."""
        alpha_i, sigma_i, _ = self._at(t_i, x_ti.shape[0], x_ti)
        alpha_s, sigma_s, _ = self._at(t_s, x_ti.shape[0], x_ti)
        r = alpha_i / alpha_s
        return x_ti - r * x_ts - (sigma_i - r * sigma_s) * z_s, ((x_ts - sigma_s * z_s) / alpha_s).clamp(-1, 1)

    def _at(self, t, n, like):
        """alpha, sigma and the clipped sqrt(SNR) of the Dash's schedule at t, shaped to broadcast."""
        t = torch.as_tensor(t, device=like.device).round().long().clamp(0, len(self.alpha) - 1)
        t = t.expand(n) if t.ndim == 0 else t
        shape = (-1, *([1] * (like.ndim - 1)))
        return (self.alpha[t].to(like.dtype).reshape(shape), self.sigma[t].to(like.dtype).reshape(shape),
                self.snr_sqrt[t].to(like.dtype).reshape(shape))

    # Only the trainable tensors are stored; the shared ones come from the Dash.
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().contiguous() for k, p in self.named_parameters() if p.requires_grad}

    def save(self, path, extra_metadata: dict | None = None):
        meta = {"dot_config": json.dumps(asdict(self.config)), **(extra_metadata or {})}
        save_atomic(self.trainable_state_dict(), path, meta)

    @classmethod
    def load(cls, dash: nn.Module, path) -> "Dot":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        dot = cls(dash, DotConfig(**json.loads(meta["dot_config"])))
        own, saved = dot.trainable_state_dict(), load_file(path)
        bad = sorted(k for k, v in own.items() if k not in saved or saved[k].shape != v.shape)
        if bad:
            raise ValueError(f"{path}: not a Dot checkpoint for this Dash (missing or mismatched {bad[:3]})")
        dot.load_state_dict(saved, strict=False)
        return dot.eval()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    size = 2 * round(3 * sigma) + 1
    return TF.gaussian_blur(x, [size, size], [sigma, sigma])


DETAIL_SIGMA = 1.5  # pixels: the blur whose remainder the error-shape stand-ins, --loss blurring and
# `morse.ablation --error-shapes` call fine detail


def detail(x: torch.Tensor) -> torch.Tensor:
    """What a blur of DETAIL_SIGMA pixels removes from x."""
    return x - blur(x, DETAIL_SIGMA)
