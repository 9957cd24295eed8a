"""Process-wide CPU settings that the conv nets here need to run at full speed."""

import ctypes
import ctypes.util
import os

import torch

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_tuned = False


def tune_malloc() -> bool:
    """Stop glibc from mmapping and unmapping every large activation buffer.

    Conv activations of a few MB are above glibc's default mmap threshold, so every
    forward pays page faults for fresh zero pages; that costs 1.5-1.8x on these nets.
    Raising the thresholds keeps freed buffers in the heap for reuse. No-op off glibc.
    """
    global _tuned
    if _tuned or os.name != "posix":
        return _tuned
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    ok &= mallopt(_M_TOP_PAD, 1024 * 1024 * 1024)
    _tuned = bool(ok)
    return _tuned


def resolve_device(name: str) -> torch.device:
    """torch.device(name), or a one-line ValueError when it names CUDA and torch sees none."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)
