"""How the networks here run: process-wide CPU settings they need at full speed, and their precision and
compilation (CUDA graphs, torch.compile) on any device."""

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


# How a network runs: the precision of its weights and arithmetic, and what removes per-kernel launch cost.
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("none", "graphs", "reduce-overhead", "max-autotune")


def set_precision(dtype: str) -> None:
    """fp32 means fp32 arithmetic: cuDNN would otherwise run convolutions in TF32 by default, so an "fp32" GPU
    sweep would differ from the CPU's beyond what the dtype says. tf32 asks for it explicitly."""
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def check_speed_options(dtype: str, compile_mode: str, device: torch.device) -> None:
    """One-line ValueErrors for combinations that cannot run here."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if device.type != "cuda" and (compile_mode == "graphs" or dtype == "tf32"):
        what = "--compile graphs captures CUDA graphs" if compile_mode == "graphs" else "--dtype tf32 is a CUDA mode"
        raise ValueError(f"{what}: it needs --device cuda (on {device.type}: --compile none, reduce-overhead or "
                         "max-autotune, --dtype fp32, fp16 or bf16)")


def _map_output(out, fn):
    if torch.is_tensor(out):
        return fn(out)
    if hasattr(out, "sample"):  # diffusers' UNet outputs
        return type(out)(sample=fn(out.sample))
    return out


def _tensorize(args, like: torch.Tensor) -> tuple:
    """Python numbers (the Dot's timesteps) as 0-d tensors on the network's device: a traced or captured forward
    would otherwise bake each value in (one graph per timestep) and copy it from the host inside the capture."""
    return tuple(torch.tensor(a, device=like.device, dtype=torch.float32 if isinstance(a, float) else torch.long)
                 if isinstance(a, (int, float)) and not isinstance(a, bool) else a for a in args)


class CudaGraphForward:
    """A forward replayed from a plain torch.cuda.CUDAGraph, one capture per input signature (batch size),
    all in one memory pool: replays run one at a time and each output is copied out at once, so a capture
    may reuse another's intermediates."""

    def __init__(self, forward):
        self.forward, self.graphs, self.pool = forward, {}, None

    def __call__(self, *args, **kwargs):
        names = tuple(sorted(kwargs))
        flat = args + tuple(kwargs[n] for n in names)
        key = (len(args), names, *((tuple(a.shape), a.dtype) if torch.is_tensor(a) else a for a in flat))
        if key not in self.graphs:
            self.graphs[key] = self._capture(flat, len(args), names)
        graph, static_in, static_out = self.graphs[key]
        for buf, a in zip(static_in, flat):
            if torch.is_tensor(a):
                buf.copy_(a)
        graph.replay()
        return _map_output(static_out, torch.clone)

    def _capture(self, flat, n_args, names):
        static_in = tuple(a.clone() if torch.is_tensor(a) else a for a in flat)
        call = lambda: self.forward(*static_in[:n_args], **dict(zip(names, static_in[n_args:])))  # noqa: E731
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture: cuDNN picks its algorithms, lazy buffers get made
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = call()
        return graph, static_in, static_out


def speed_up(module: torch.nn.Module, dtype: str = "fp32", compile_mode: str = "none") -> torch.nn.Module:
    """Run `module` in `dtype` behind a CUDA graph or torch.compile, in place: its forward takes and returns float32
    as before, and calling the module still runs its hooks (NFE counting), which stay outside any graph."""
    if dtype in ("fp32", "tf32") and compile_mode == "none":
        return module
    if DTYPES[dtype] != torch.float32:
        module.to(dtype=DTYPES[dtype])
    inner = module.forward
    if compile_mode == "graphs":
        inner = CudaGraphForward(inner)
    elif compile_mode != "none":
        inner = torch.compile(inner, mode=compile_mode)
    cast = DTYPES[dtype]

    def forward(*args, **kwargs):
        like = next(a for a in args if torch.is_tensor(a))
        args = tuple(a.to(cast) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        args = _tensorize(args, like) if compile_mode != "none" else args
        return _map_output(inner(*args, **kwargs), lambda t: t.float())

    module.forward = forward
    return module
