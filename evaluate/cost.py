"""Cost, measured: the per-call latency of every network the methods call, in this process.

    LSD of a cell = sum over networks of calls x per-call latency / the Dash's per-call latency

with calls counted by instrumenting the networks (baselines.trace) and latencies timed here, so the
same formula prices Morse's Dot steps, a cached or merged step, or anything else a method declares.
Networks are timed interleaved (each repeat times every network once, so drift in clock speed or
load hits all of them alike), after a warm-up, at the sweep's batch size and at batch 1; each repeat
is the median of a few forwards (CUDA events on a GPU). A cell's LSD is priced with the median over
repeats, and once with each repeat's latencies (`lsd_repeats`), which shows how much the timing
noise moves it.
"""

import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baselines.timing import flops_per_image, time_forward

DASH = "dash"


@dataclass
class Latency:
    """Per-call forward time of each network at one batch size: one median per repeat (seconds)."""

    batch_size: int
    repeats_s: dict[str, list[float]]

    def seconds(self, net: str) -> float:
        return float(np.median(self.repeats_s[net]))

    def ratio(self, net: str) -> np.ndarray:
        """Dash time / this network's time, per repeat (N for a Dot)."""
        return np.asarray(self.repeats_s[DASH]) / np.asarray(self.repeats_s[net])


@dataclass
class CellCost:
    calls: dict[str, float]    # NFE per sample, per network
    lsd: float                 # priced with median latencies
    lsd_repeats: list[float]   # priced with each repeat's latencies
    ms_per_image: float        # sampling wall time
    network_ms_per_image: float


@dataclass
class CostModel:
    latency: dict[int, Latency]   # by batch size
    batch_size: int               # the sweep's: the one cells are priced at
    flops: dict[str, float]       # per image, per network
    device: str

    @property
    def networks(self) -> list[str]:
        return list(self.flops)

    def cell_cost(self, nfe: dict, wall_s: float, network_s: float, n_samples: int) -> CellCost:
        lat = self.latency[self.batch_size]
        unknown = set(nfe) - set(lat.repeats_s)
        if unknown:
            raise ValueError(f"calls to undeclared networks {sorted(unknown)}: a method must declare every "
                             "network it calls")
        lsd = sum(calls * lat.seconds(n) for n, calls in nfe.items()) / lat.seconds(DASH)
        repeats = [sum(calls * lat.repeats_s[n][r] for n, calls in nfe.items()) / lat.repeats_s[DASH][r]
                   for r in range(len(lat.repeats_s[DASH]))]
        return CellCost(dict(nfe), lsd, repeats, wall_s / n_samples * 1e3, network_s / n_samples * 1e3)

    def ratio_summary(self, net: str) -> dict:
        """Median, min and max over repeats of Dash time / `net` time at the sweep's batch size."""
        r = self.latency[self.batch_size].ratio(net)
        return dict(median=float(np.median(r)), min=float(r.min()), max=float(r.max()), repeats=len(r))

    def describe(self) -> str:
        parts = []
        for bs, lat in self.latency.items():
            nets = ", ".join(f"{n} {lat.seconds(n) * 1e3:.2f} ms ({self.flops[n] * bs / lat.seconds(n) / 1e12:.3f} "
                             f"TFLOP/s)" for n in self.networks)
            parts.append(f"batch {bs}: {nets}")
        return " ; ".join(parts)


def union_networks(methods, denoiser) -> dict:
    """Every network any method declares, by name (a name stands for one network within a run)."""
    nets = {}
    for m in methods:
        nets.update(m.networks(denoiser))
    if DASH not in nets:
        raise ValueError("no method declares the Dash: LSD is priced in Dash calls")
    return {DASH: nets.pop(DASH), **nets}


def measure(networks: dict, shape, batch_sizes, device, repeats: int = 5, per_repeat: int = 5,
            dtype=torch.float32) -> dict[int, Latency]:
    """Interleaved per-call latency of each network at each batch size."""
    out = {}
    for bs in batch_sizes:
        x = torch.randn(bs, *shape, device=device, dtype=dtype)
        t = torch.full((bs,), 500, device=device)
        times = {name: [] for name in networks}
        for r in range(repeats):
            for name, net in networks.items():
                forward = lambda net=net, x=x, t=t: net.forward(x, t)  # noqa: E731
                times[name].append(time_forward(forward, per_repeat, 2 if r == 0 else 1, device))
        out[bs] = Latency(bs, times)
    return out


def network_flops(networks: dict, shape, device, dtype=torch.float32) -> dict[str, float]:
    """FLOPs per image of one forward of each network (torch's FLOP counter, at batch 1)."""
    x1, t1 = torch.randn(1, *shape, device=device, dtype=dtype), torch.full((1,), 500, device=device)
    return {name: flops_per_image(lambda net=net: net.forward(x1, t1)) for name, net in networks.items()}


def cost_model(methods, denoiser, shape, batch_size: int, device, repeats: int = 5, dtype=torch.float32) -> CostModel:
    networks = union_networks(methods, denoiser)
    flops = network_flops(networks, shape, device, dtype)
    latency = measure(networks, shape, sorted({1, batch_size}), device, repeats, dtype=dtype)
    return CostModel(latency, batch_size, flops, str(device))


# Dense peak TFLOP/s from the vendors' datasheets (no structured sparsity; SXM parts where there are several).
# Matched in order against torch.cuda.get_device_name, so a specific name comes before its family's.
PEAK_TFLOPS = [
    ("H200 NVL", dict(fp32=60.0, tf32=418.0, fp16=835.0, bf16=835.0)),
    ("H200", dict(fp32=67.0, tf32=494.7, fp16=989.4, bf16=989.4)),
    ("H100 PCIe", dict(fp32=51.2, tf32=378.0, fp16=756.0, bf16=756.0)),
    ("H100 NVL", dict(fp32=60.0, tf32=418.0, fp16=835.0, bf16=835.0)),
    ("H100", dict(fp32=67.0, tf32=494.7, fp16=989.4, bf16=989.4)),
    ("A100", dict(fp32=19.5, tf32=156.0, fp16=312.0, bf16=312.0)),
    ("L40S", dict(fp32=91.6, tf32=183.0, fp16=362.0, bf16=362.0)),
    ("L4", dict(fp32=30.3, tf32=60.0, fp16=121.0, bf16=121.0)),
    ("A10G", dict(fp32=31.2, tf32=62.5, fp16=125.0, bf16=125.0)),
    ("A10", dict(fp32=31.2, tf32=62.5, fp16=125.0, bf16=125.0)),
    ("RTX 4090", dict(fp32=82.6, tf32=82.6, fp16=165.2, bf16=165.2)),
    ("RTX 3090", dict(fp32=35.6, tf32=35.6, fp16=71.0, bf16=71.0)),
    ("V100", dict(fp32=15.7, fp16=125.0)),
    ("T4", dict(fp32=8.1, fp16=65.0)),
]


def peak_tflops(device_name: str, dtype: str) -> float:
    """The device's dense peak for `dtype` (fp32, tf32, fp16, bf16), NaN where the table has none (CPUs)."""
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_name.lower():
            return peaks.get(dtype, math.nan)
    return math.nan


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.machine()
    return f"cpu ({model})"


def n_header(cost: CostModel) -> str:
    """N (Dash/Dot latency ratio) for the report header, or why there is none."""
    dots = [n for n in cost.networks if n != DASH]
    if not dots:
        return "n/a (no method calls a network other than the Dash)"
    parts = []
    for n in dots:
        s = cost.ratio_summary(n)
        parts.append(f"{n}: median {s['median']:.2f} (min {s['min']:.2f}, max {s['max']:.2f} over {s['repeats']} "
                     f"interleaved repeats at batch {cost.batch_size})")
    return "; ".join(parts)


def gflop_header(cost: CostModel) -> str:
    return ", ".join(f"{n} {f / 1e9:.3f}" if math.isfinite(f) else f"{n} n/a" for n, f in cost.flops.items()) + \
        " (torch FLOP counter)"


def peak_header(cost: CostModel, name: str, dtype: str) -> str:
    """Achieved TFLOP/s of each network at the sweep's batch size as a share of the device's dense peak."""
    peak = peak_tflops(name, dtype)
    if not math.isfinite(peak):
        return f"n/a (no {dtype} peak on record for {name})"
    lat = cost.latency[cost.batch_size]
    shares = [f"{n} {100 * cost.flops[n] * cost.batch_size / lat.seconds(n) / 1e12 / peak:.1f}%" for n in cost.networks]
    return f"{', '.join(shares)} of {peak:g} TFLOP/s ({name}, {dtype}, batch {cost.batch_size})"
