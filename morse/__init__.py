"""Morse: Dash (the pre-trained diffusion model, run with jump steps) + Dot (a fast,
weight-shared network feeding residual corrections between jump steps)."""

from morse.dot import Dot, DotConfig
from morse.interleave import Interleave
from morse.sampler import Morse, MorseOracle

__all__ = ["Dot", "DotConfig", "Interleave", "Morse", "MorseOracle"]
