"""What a sampling run cost: network evaluations counted by instrumenting the networks."""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class Trace:
    """NFE per network (evaluations per sample), solver timesteps visited, wall time."""

    nfe: dict[str, float] = field(default_factory=dict)
    network_time_s: dict[str, float] = field(default_factory=dict)
    timesteps: list[float] = field(default_factory=list)
    networks_per_step: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return dict(nfe=dict(self.nfe), network_time_s=dict(self.network_time_s),
                    timesteps=list(self.timesteps), networks_per_step=list(self.networks_per_step),
                    wall_time_s=self.wall_time_s)


@contextmanager
def count_nfe(trace: Trace, num_samples: int, **networks: torch.nn.Module):
    """Count forward calls of each named network, in rows evaluated per sample.

    Counting rows (not calls) makes a classifier-free-guidance batch of [uncond, cond]
    cost 2 NFE per step, which is what it really costs. The hooks also time each forward;
    on CUDA they synchronise, so per-network times there are for accounting, not latency.
    """
    handles, started = [], {}

    def pre(name):
        def hook(module, args, kwargs):
            if _on_cuda(args):
                torch.cuda.synchronize()
            started[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            if _on_cuda(args):
                torch.cuda.synchronize()
            rows = _rows(args, kwargs)
            trace.nfe[name] = trace.nfe.get(name, 0.0) + rows / num_samples
            trace.network_time_s[name] = (trace.network_time_s.get(name, 0.0)
                                          + time.perf_counter() - started.pop(name))
        return hook

    for name, net in networks.items():
        trace.nfe.setdefault(name, 0.0)
        trace.network_time_s.setdefault(name, 0.0)
        handles.append(net.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(net.register_forward_hook(post(name), with_kwargs=True))
    try:
        yield trace
    finally:
        for h in handles:
            h.remove()


def _first_tensor(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    raise TypeError("instrumented network called without a tensor argument")


def _rows(args, kwargs) -> int:
    return _first_tensor(args, kwargs).shape[0]


def _on_cuda(args) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor) and args[0].is_cuda
