"""Latency-only mode: per-call latency, GFLOP and N of every network the methods call, with random weights."""

import pandas as pd
import torch

from baselines.tasks import get_task
from baselines.tasks.cifar10 import CIFAR10
from baselines.timing import flops_per_image
from evaluate.methods import Context, resolve
from evaluate.run import main


class TinyCifar(CIFAR10):
    """cifar10's architecture, 8-16 channels wide: the mode's mechanics in seconds."""

    def architecture(self):
        return {**super().architecture(), "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4}


def test_report_has_every_network_and_states_what_was_skipped(tmp_path):
    out = tmp_path / "latency"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only adds synchronisation, badly so on a busy CPU
    # A million images per call is predicted to take hours on any machine: skipped, and said so.
    argv = ["--task", f"{__name__}:TinyCifar", "--methods", "morse,ddim", "--latency-only", "--random-weights",
            "--latency-batches", "1,2,1000000", "--latency-budget-s", "3600", "--out", str(out)]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    table = pd.read_csv(out / "cifar10.csv")
    assert sorted(zip(table.network, table.batch)) == [("dash", 1), ("dash", 2), ("dot", 1), ("dot", 2)]
    assert (table.repeats >= 5).all() and (table.ms_per_call > 0).all() and (table.tflops > 0).all()
    dot = table[table.network == "dot"]
    assert (dot.n_min <= dot.n_median).all() and (dot.n_median <= dot.n_max).all() and (dot.n_min > 0).all()
    text = (out / "cifar10.md").read_text()
    assert "batch 1000000 skipped" in text and "morse: dash, dot; ddim: dash" in text and "random (seed 0" in text


def test_dot_builds_on_each_paper_architecture():
    for name in ("cifar10", "celebahq256", "church256"):
        task = get_task(name, random_weights=True)
        dash = task.dash()
        dot = resolve("morse", Context(task, dash, latency_only=True)).morse.dot
        shared = {id(p) for p in dash.parameters()}
        assert any(id(p) in shared for p in dot.parameters()), name  # the body is the Dash's own layers
        assert dot.config.skip_levels == 1 and dot.config.schedule == task.schedule_config


def test_cifar10_random_weights_cost_what_the_paper_network_costs():
    dash = get_task("cifar10", random_weights=True).dash()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    assert 11.5e9 < flops_per_image(lambda: dash(x, t)) < 13.0e9  # 12.1 GFLOP: convolutions and attention


def test_bad_batch_sizes_write_nothing(tmp_path, capsys):
    out = tmp_path / "latency"
    assert main(["--task", "cifar10", "--methods", "ddim", "--latency-only", "--random-weights",
                 "--latency-batches", "1,a", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--latency-batches" in err[0]
    assert not out.exists()
