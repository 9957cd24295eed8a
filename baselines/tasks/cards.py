"""Model cards moved to the training wing (baselines.training.cards); this name stays until morse.train imports
them from there."""

from baselines.training.cards import lineage, render, write_card  # noqa: F401
