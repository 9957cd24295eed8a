"""Scale-out under torchrun (gloo, 2 CPU processes): the same samples and FD as one process, resume after a
killed rank, a dead rank stops the others with one line naming it, DDP training matches one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from evaluate.run import main

ROOT = Path(__file__).resolve().parent.parent
# Two shards of 50 seeds (four for the kill), one per rank: few samples, so the processes, not the sampling, take the
# time; batch 10 keeps the latency probe (batch 1 and 10) short.
SWEEP = ["--methods", "ddim", "--budgets", "2", "--num-samples", "100", "--batch-size", "10", "--bootstrap", "5",
         "--force", "--shard-size", "50"]


def torchrun(*argv, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *argv]
    # Read at the call, not at import: the session's private cache (conftest) is set after collection, and the
    # ranks then reuse its reference statistics instead of computing them into the user's cache.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def one_thread(fn, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what torchrun gives each rank: the same kernels, the same bits
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _shards(out: Path) -> dict:
    return {p.relative_to(out): load_file(p)["samples"] for p in sorted(out.rglob("shard-*.safetensors"))}


def test_two_ranks_give_the_one_process_samples_and_fd(tmp_path):
    proc = torchrun("-m", "evaluate.run", "--out", str(tmp_path / "two"), *SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert one_thread(main, ["--out", str(tmp_path / "one"), *SWEEP]) == 0
    two, one = _shards(tmp_path / "two"), _shards(tmp_path / "one")
    assert two.keys() == one.keys() and len(one) == 2
    for k in one:
        assert torch.equal(one[k], two[k]), k
    df = {n: pd.read_csv(tmp_path / n / "results.csv") for n in ("one", "two")}
    fd = {n: d[d.metric == "fd_fmnist"].value.item() for n, d in df.items()}
    assert fd["two"] == pytest.approx(fd["one"], abs=1e-6)
    assert (df["two"].devices == 2).all() and (df["one"].devices == 1).all()
    assert {"dtype", "compile", "device_name"} <= set(df["two"].columns)
    index = (tmp_path / "two" / "index.md").read_text()
    assert "2 processes (gloo)" in index and "rank 1:" in index


def _rank_pid(launcher: subprocess.Popen, rank: int, deadline: float) -> int:
    """The pid of the worker torchrun started as `rank` (its environment says so)."""
    while time.time() < deadline:
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        for pid in children:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError("torchrun started no worker")


def test_killed_rank_stops_the_others_and_the_relaunch_resumes(tmp_path):
    out = tmp_path / "r"
    argv = ["-m", "evaluate.run", "--out", str(out), *SWEEP[:4], "--num-samples", "200", *SWEEP[6:]]  # 4 shards
    launcher = torchrun(*argv, wait=False)
    deadline = time.time() + 300
    victim = _rank_pid(launcher, 1, deadline)
    while time.time() < deadline and not list(out.rglob("shard-*.safetensors")):
        time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    _, err = launcher.communicate(timeout=120)
    assert time.time() - killed_at < 60
    assert launcher.returncode != 0 and not (out / "index.md").exists()
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "rank 1" in ours[0] and "rerun" in ours[0], err[-3000:]

    done = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.safetensors")}
    assert 0 < len(done) < 4
    proc = torchrun(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "a finished shard was sampled again"
    assert len(list(out.rglob("shard-*.safetensors"))) == 4 and (out / "index.md").exists()


def test_heartbeat_names_a_silent_or_failed_rank(monkeypatch):
    from baselines import distributed

    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setattr(distributed, "DEAD_AFTER_S", 0.3)
    deaths = []
    monkeypatch.setattr(distributed, "_die", deaths.append)
    beat = distributed.Heartbeat(0, 3)
    try:
        other = distributed._store()
        other.set("1", "1")
        other.set("2", "done")
        with beat.lock:  # the beat's own thread checks too
            assert beat._check() is None and beat.finished == {2}
        time.sleep(0.5)
        with beat.lock:
            assert "rank 1 stopped responding" in beat._check()
        other.set("1", "failed")
        with beat.lock:
            assert "rank 1 failed" in beat._check()
    finally:
        beat.stop("done")
    assert other.get("0") == b"done"


def test_latency_only_refuses_torchrun_and_graphs_refuse_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--latency-only", "--random-weights", "--task", "cifar10", "--out", str(tmp_path)]) == 2
    assert "one process" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    for flags, needle in ((["--compile", "graphs"], "--device cuda"), (["--dtype", "tf32"], "--device cuda"),
                          (["--compile", "fast"], "--compile must be")):
        assert main(["--out", str(tmp_path), *SWEEP, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not list(tmp_path.iterdir())


def _weights_close(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= atol, diff


def test_ddp_dash_training_matches_one_process(tmp_path):
    from baselines.tasks import train_dash

    args = ["--steps", "20", "--batch-size", "4", "--checkpoint-every", "10"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = torchrun("-m", "baselines.tasks.train_dash", *args, "--work-dir", str(two), "--out",
                    str(two / "d.safetensors"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_thread(train_dash.main, [*args, "--work-dir", str(one), "--out", str(one / "d.safetensors")])
    _weights_close(one / "d.safetensors", two / "d.safetensors", 1e-5)


def test_ddp_dot_training_matches_one_process(tmp_path):
    from morse import train

    args = ["--trajectories", "4", "--heldout", "2", "--budgets", "3", "--iters", "20", "--checkpoint-every", "10",
            "--batch-size", "8", "--latency-batches", "1"]
    proc = torchrun("-m", "morse.train", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_thread(train.main, [*args, "--out", str(tmp_path / "one")])
    _weights_close(tmp_path / "one" / "dot.safetensors", tmp_path / "two" / "dot.safetensors", 1e-5)
    assert len((tmp_path / "two" / "loss.jsonl").read_text().splitlines()) == 20
