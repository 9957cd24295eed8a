"""LCM-SDXL (`lcm-sdxl`): the consistency-distilled SDXL UNet of `latent-consistency/lcm-sdxl` with the text
encoders, tokenizers and VAE of `stabilityai/stable-diffusion-xl-base-1.0`, sampled in 1-8 steps.

As `sd14-coco` (see `baselines.tasks.sd14_coco`), plus what SDXL and LCM add:
* SDXL's added conditioning: the second text encoder's pooled embedding and the size/crop ids
  (original size = target size = the image size, crop (0, 0), as diffusers' SDXL pipeline sets them by default),
  carried in each `Condition` as `text_embeds` and `time_ids`;
* LCM's guidance: the UNet was distilled with the guidance scale w as an input (`time_cond_proj_dim`), so
  guidance costs no second branch; the Denoiser feeds w's embedding as `timestep_cond`;
* the Dash itself is the distilled model: `lcm_dash()` returns it for the `lcm` method.

With --weights DIR, DIR holds the lcm-sdxl UNet in `unet/` and SDXL base's `text_encoder/`, `text_encoder_2/`,
`tokenizer/`, `tokenizer_2/` and `vae/`. Quality is CLIP score only (the paper measures LCM-SDXL so).
"""

import torch

from baselines.denoisers import Condition
from baselines.tasks.sd14_coco import TextToImageTask

LCM, SDXL = "latent-consistency/lcm-sdxl", "stabilityai/stable-diffusion-xl-base-1.0"
TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


class LCMSDXL(TextToImageTask):
    name = "lcm-sdxl"
    config_dir = "lcm-sdxl"
    components = {"unet": (LCM, "", "UNet2DConditionModel"), "vae": (SDXL, "vae", "AutoencoderKL"),
                  "text_encoder": (SDXL, "text_encoder", "CLIPTextModel"),
                  "text_encoder_2": (SDXL, "text_encoder_2", "CLIPTextModelWithProjection"),
                  "tokenizer": (SDXL, "tokenizer", "CLIPTokenizer"),
                  "tokenizer_2": (SDXL, "tokenizer_2", "CLIPTokenizer")}
    pipeline_class = "StableDiffusionXLPipeline"
    pipeline_kwargs = dict(add_watermarker=False)
    # SDXL base's scheduler_config.json (Euler's bookkeeping keys left out); LCMScheduler's own defaults
    # (original_inference_steps 50, timestep_scaling 10) are the ones lcm-sdxl was distilled with.
    schedule_config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           steps_offset=1, prediction_type="epsilon")
    default_guidance = 8.0  # the lcm-sdxl model card's example
    metrics = ("clip_score",)
    primary_metric = "clip_score"
    default_fid_samples = 0
    unet_requires = {"addition_embed_type": "text_time", "time_cond_proj_dim": True}

    def download_hint(self) -> str:
        return (f"`hf download {LCM} --local-dir DIR/unet` and `hf download {SDXL} --local-dir DIR` (then pass "
                f"--weights DIR), or the same without --local-dir into the Hugging Face cache")

    def lcm_dash(self):
        """The consistency-distilled network the `lcm` method samples with: the Dash itself."""
        return self._unet if self._unet is not None else self.dash()

    def _size(self) -> int:
        vae_scale = self.pipeline().vae_scale_factor if not self.random_weights else 8
        return self.image_shape[1] * vae_scale

    def _time_ids(self, n: int, dtype) -> torch.Tensor:
        size = (self._size(),) * 2
        if self.random_weights:
            return torch.tensor([[*size, 0, 0, *size]], dtype=dtype).expand(n, TIME_IDS)
        pipe = self.pipeline()
        ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return ids.expand(n, TIME_IDS)

    def zero_condition(self) -> Condition:
        c = self._config
        pooled = c["projection_class_embeddings_input_dim"] - TIME_IDS * c["addition_time_embed_dim"]
        return Condition(torch.zeros(1, 77, c["cross_attention_dim"]), text_embeds=torch.zeros(1, pooled),
                         time_ids=self._time_ids(1, torch.float32))

    def encode(self, prompts: list[str], unconditional: bool = False) -> Condition:
        pipe, device = self.pipeline(), self._device()
        pipe.text_encoder.to(device)
        pipe.text_encoder_2.to(device)
        # The empty prompt encodes as zeros (SDXL's force_zeros_for_empty_prompt): the pipeline's negative branch.
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                             do_classifier_free_guidance=unconditional)
        if unconditional:
            embeds, pooled = neg, neg_pooled
        return Condition(embeds, text_embeds=pooled, time_ids=self._time_ids(len(prompts), embeds.dtype).to(device))
