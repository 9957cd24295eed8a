"""CIFAR-10 32x32 with `google/ddpm-cifar10-32` (DDPM, Ho et al. 2020: UNet2DModel, 35.7M parameters,
linear betas 1e-4..0.02 over 1000 steps, noise prediction).

FID protocol: 50,000 samples against the statistics of the 50,000 CIFAR-10 train images, TF-FID Inception
behind clean-fid's clean resize. clean-fid publishes exactly these statistics as `cifar10_clean_train_32.npz`
(https://www.cs.cmu.edu/~clean-fid/stats/); pass that file, or a folder of the train images, as --reference.
Anchors: the DDIM paper's Table 1 (13.36 at 10 steps, 4.16 at 100). Whether this checkpoint holds the EMA
weights is not stated on its card; non-EMA weights score markedly worse, so check before quoting its FID
against the paper's.
"""

from baselines.tasks.pixel import PretrainedPixelTask


class CIFAR10(PretrainedPixelTask):
    name = "cifar10"
    repo_id = "google/ddpm-cifar10-32"
    reference_hint = "clean-fid's cifar10_clean_train_32.npz, or the 50,000 CIFAR-10 train images"
