"""CelebA-HQ 256x256 with `google/ddpm-ema-celebahq-256` (DDPM, Ho et al. 2020, EMA weights: UNet2DModel,
113.7M parameters, attention at 16x16, linear betas 1e-4..0.02 over 1000 steps, noise prediction).

FID protocol: 50,000 samples against the statistics of the 30,000 CelebA-HQ images at 256x256, TF-FID
Inception behind clean-fid's clean resize. clean-fid publishes no CelebA-HQ statistics: pass a folder of
the 30,000 images (or a .npz of mu and sigma computed from them with clean-fid) as --reference.
"""

from baselines.tasks.pixel import PretrainedPixelTask


class CelebAHQ256(PretrainedPixelTask):
    name = "celebahq256"
    repo_id = "google/ddpm-ema-celebahq-256"
    reference_hint = "a folder of the 30,000 CelebA-HQ 256x256 images, or their clean-fid mu/sigma"
