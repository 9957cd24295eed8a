"""Baseline samplers behind one method interface, denoiser wrappers, and the tasks they run on."""
