"""LSUN-Church 256x256 with `google/ddpm-ema-church-256` (DDPM, Ho et al. 2020, EMA weights: UNet2DModel,
113.7M parameters, attention at 16x16, linear betas 1e-4..0.02 over 1000 steps, noise prediction).

FID protocol: 50,000 samples against the statistics of the LSUN-Church (outdoor) train set, TF-FID
Inception behind clean-fid's clean resize. clean-fid publishes LSUN-Church statistics at 256x256 (dataset
`lsun_church`, files under https://www.cs.cmu.edu/~clean-fid/stats/); pass such a .npz, or a folder of the
train images, as --reference, and report which split it holds.
Anchors: the DDIM paper's Table 3 (19.45 / 12.47 / 10.84 / 10.58 at 10 / 20 / 50 / 100 steps).
"""

from baselines.tasks.pixel import PretrainedPixelTask


class Church256(PretrainedPixelTask):
    name = "church256"
    repo_id = "google/ddpm-ema-church-256"
    reference_hint = "clean-fid's lsun_church statistics at 256, or a folder of the LSUN-Church train images"
