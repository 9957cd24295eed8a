"""The harness end to end: bad input, NaN samples, SIGKILL and resume, corrupt cache."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from evaluate.run import main

ROOT = Path(__file__).resolve().parent.parent
# Batch 25: per image as fast as 64 on a CPU, the latency probe (31 forwards at the batch size) 2.5x shorter, and
# quarters of 100.
SMALL = ["--methods", "ddim", "--budgets", "2,3", "--num-samples", "100", "--force", "--bootstrap", "5", "--batch-size",
         "25"]
DETERMINISTIC = ["fd_fmnist", "confidence", "class_min_frac", "class_max_frac", "nfe_dash", "nfe_dot", "lsd"]


def _values(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    return df[df.metric.isin(DETERMINISTIC)].set_index(["method", "budget", "metric"])["value"].sort_index()


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "dimm"], "valid:"),
    (["--methods", ""], "empty"),
    (["--methods", "morse-unipc"], "--solver unipc"),  # no Dot trained on UniPC's path
    (["--task", "cifar"], "valid tasks"),
    (["--budgets", "0.5,4"], ">= 1"),
    (["--budgets", "four"], "comma-separated"),
    (["--budgets", "4,1000000000"], "the largest budget is 1000"),  # above the schedule's training steps
    (["--out", "/proc/x/y", "--budgets", "2", "--num-samples", "200"], "cannot create"),  # no parent can be made
    (["--num-samples", "50"], "--force"),
    (["--shard-size", "0"], "--shard-size must be at least 1"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--budgets", "0"], "cuda" if not
     torch.cuda.is_available() else ">= 1"),
])
def test_bad_input_one_line_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["--out", str(out)] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (out / "index.md").exists()


def test_exit_code_2_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evaluate.run", "--methods", "nope", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown method 'nope'" in proc.stderr


def test_missing_weights(tmp_path, monkeypatch, capsys):
    import baselines.tasks.fmnist as fmnist

    monkeypatch.setattr(fmnist, "WEIGHTS", tmp_path / "nowhere")
    assert main(["--out", str(tmp_path / "r")] + SMALL) == 2
    assert "weights" in capsys.readouterr().err


def test_missing_data_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MORSE_BENCH_CACHE", str(tmp_path / "empty-cache"))
    assert main(["--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "no-data")] + SMALL) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_nan_samples_refused_and_not_cached(tmp_path, monkeypatch, capsys):
    from baselines.denoisers import Denoiser

    monkeypatch.setattr(Denoiser, "forward", lambda self, x, t, cond=None: x * float("nan"))
    out = tmp_path / "r"
    assert main(["--out", str(out)] + SMALL) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not list(out.rglob("*.safetensors")) and not (out / "index.md").exists()


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    # Three shards of one cell: the kill lands after the first, so the resume finishes a part-cached cell.
    argv = ["--methods", "ddim", "--budgets", "2", "--num-samples", "150", "--shard-size", "50", "--force",
            "--bootstrap", "5", "--batch-size", "16"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "evaluate.run", "--out", str(killed)] + argv, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(killed.rglob("shard-*.safetensors")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in killed.rglob("shard-*.safetensors")}
    assert 0 < len(done_before) < 3, "the kill landed before the first shard or after the last"
    assert not (killed / "index.md").exists()

    assert main(["--out", str(killed)] + argv) == 0
    for p, mtime in done_before.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was recomputed"
    assert len(list(killed.rglob("shard-*.safetensors"))) == 3
    assert not list(killed.rglob("*.tmp"))

    clean = tmp_path / "clean"
    assert main(["--out", str(clean)] + argv) == 0
    pd.testing.assert_series_equal(_values(killed), _values(clean))


def test_corrupt_shard_is_recomputed(tmp_path):
    out = tmp_path / "r"
    assert main(["--out", str(out)] + SMALL) == 0
    first = _values(out)
    shard = sorted(out.rglob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="unreadable"):
        assert main(["--out", str(out)] + SMALL) == 0
    pd.testing.assert_series_equal(_values(out), first)
    # Wall time is priced only from this run's samples: the recomputed cell has one, the cached cell none.
    df = pd.read_csv(out / "results.csv")
    ms = df[df.metric == "ms_per_image"].set_index("budget").value
    assert ms[2] > 0 and ms[3] != ms[3]
    assert "one read whole from the cache is left blank" in (out / "index.md").read_text()


def test_report_files(tmp_path):
    out = tmp_path / "r"
    assert main(["--out", str(out), "--methods", "morse,ddim"] + SMALL[2:]) == 0
    for name in ("results.csv", "tables.md", "tables.tex", "fd_fmnist_vs_lsd.png", "fd_fmnist_vs_nfe.png",
                 "speedup.png", "index.md", "grids/ddim-budget2.png", "grids/morse-budget3.png"):
        assert (out / name).exists(), name
    df = pd.read_csv(out / "results.csv")
    assert {"commit", "metric_impl", "reference_sha256", "n_samples", "seeds", "device"} <= set(df.columns)
    nfe = df[(df.metric == "nfe_dot") & (df.method == "morse") & (df.budget == 3)].value.item()
    assert nfe > 0
    # KID, which the task declares, with its interval in every cell, and its table.
    kid = df[df.metric.str.startswith("kid_fmnist")].pivot_table(index=["method", "budget"], columns="metric",
                                                                  values="value")
    assert len(kid) == 4 and (kid.kid_fmnist_ci_low <= kid.kid_fmnist_ci_high).all()
    assert "### kid_fmnist" in (out / "tables.md").read_text()
    # The cost section has one NFE table per network that ran, then the total, and no empty table.
    index = (out / "index.md").read_text()
    cost = index[index.index("## Cost"):index.index("## Samples")]
    assert [line for line in cost.splitlines() if line.startswith("`")] == [
        "`nfe_dash`", "`nfe_dot`", "`nfe_total`", "`ms_per_image`"]
    assert "| method   |\n|----------|" not in cost


def test_clamp_samples_changes_what_the_metrics_read_not_the_samples(tmp_path):
    from safetensors.torch import load_file

    from baselines.tasks import get_task
    from evaluate.features import ClassifierFeatures

    out = tmp_path / "r"
    args = ["--out", str(out)] + SMALL[:4] + ["--num-samples", "100", "--force", "--bootstrap", "0"]
    assert main(args) == 0
    plain = pd.read_csv(out / "results.csv")
    assert main(args + ["--clamp-samples"]) == 0  # the cache reused
    clamped = pd.read_csv(out / "results.csv")
    assert not plain.clamped.any() and clamped.clamped.all()
    assert "images clamped to [-1, 1]" in (out / "index.md").read_text()
    shards = (out / "cache" / "ddim" / "budget-2").glob("*.safetensors")
    x = torch.cat([load_file(f)["samples"] for f in shards])
    assert x.abs().amax() > 1  # two DDIM steps overshoot the data range, so clamping has something to change
    task = get_task("fmnist")
    features = ClassifierFeatures(task.classifier(), task.classifier_path)
    for df, images in ((plain, x), (clamped, x.clamp(-1, 1))):
        conf = df[(df.metric == "confidence") & (df.budget == 2)].value.item()
        assert conf == pytest.approx(float(features(images)[1].max(1).mean()), abs=1e-6)
    fd = [df[(df.metric == "fd_fmnist") & (df.budget == 2)].value.item() for df in (plain, clamped)]
    assert fd[0] != fd[1]


def test_check_update_then_check(tmp_path, capsys):
    """--update writes the baseline (atomically, with its reason); a plain check then passes, and a
    baseline that promises a better FD than the run gives fails."""
    import json

    from evaluate import check

    path = tmp_path / "base.json"
    base = dict(sweep=dict(task="fmnist", methods="ddim", budgets="2", num_samples=100, force=True, batch_size=25,
                           seed=7),
                tolerances=dict(fd_fmnist=dict(rel=0.05, abs=0.05), nfe_dash=dict(abs=0, two_sided=True)))
    path.write_text(json.dumps(base))
    assert check.main(["--baseline", str(path), "--update"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert check.main(["--baseline", str(path), "--update", "--reason", "first"]) == 0
    written = json.loads(path.read_text())
    assert written["values"]["nfe_dash"] == {"ddim@2": 2.0} and written["history"][-1]["reason"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json"]
    assert check.main(["--baseline", str(path)]) == 0
    written["values"]["fd_fmnist"]["ddim@2"] *= 0.5
    path.write_text(json.dumps(written))
    assert check.main(["--baseline", str(path)]) == 1
    assert "REGRESSION" in capsys.readouterr().out


def test_commit_is_dirty_for_code_changes_not_for_the_report_being_rewritten(tmp_path):
    from evaluate.run import git_commit

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    report = tmp_path / "reports" / "ref"
    report.mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (report / "index.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    head = git("rev-parse", "--short", "HEAD")
    (report / "index.md").unlink()  # what a run does to the committed report it regenerates
    assert git_commit(exclude=report, root=tmp_path) == head
    assert git_commit(root=tmp_path) == head + "+dirty"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(exclude=report, root=tmp_path) == head + "+dirty"


def test_truncated_weights_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """A Dash cut short (a full disk, an interrupted copy) is refused against its card's sha256, in one line."""
    import shutil

    import baselines.tasks.fmnist as fmnist

    weights = tmp_path / "weights"
    shutil.copytree(fmnist.WEIGHTS, weights)
    dash = weights / "fmnist_dash.safetensors"
    dash.write_bytes(dash.read_bytes()[: dash.stat().st_size // 2])
    monkeypatch.setattr(fmnist, "WEIGHTS", weights)
    out = tmp_path / "r"
    assert main(["--out", str(out)] + SMALL) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "sha256" in err[0] and "fmnist_dash" in err[0]
    assert not out.exists()


def test_out_naming_a_file_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    assert main(["--out", str(path)] + SMALL) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "is a file" in err[0]
    assert path.read_text() == "mine\n"


def test_help_says_what_each_flag_means(capsys):
    from evaluate.defaults import FLAGS

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also after a hyphen
    for key, flag in FLAGS.items():
        shown = flag.help if flag.default is None else f"{flag.help} (default {flag.default})"
        assert "".join(shown.split()) in text, key
    assert "(defaultNone)" not in text  # an unset flag's help says what fills it instead


def test_ctrl_c_one_line_exit_130_then_resume(tmp_path):
    # 3 shards: the 2 left after the first (and the metrics after them) keep the run busy well past the interrupt
    argv = ["--methods", "ddim", "--budgets", "2", "--num-samples", "150", "--shard-size", "50", "--force",
            "--bootstrap", "5", "--batch-size", "16"]
    out = tmp_path / "r"
    # A runner started in the background by a non-interactive shell ignores SIGINT, and a child inherits that
    # (Python then installs no KeyboardInterrupt handler): give the run the default, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "evaluate.run", "--out", str(out)] + argv, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.rglob("shard-*.safetensors")):
        time.sleep(0.05)
    assert list(out.rglob("shard-*.safetensors")), "no shard finished before the deadline"
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "interrupted" in ln]
    assert lines == ["interrupted: finished samples are kept; rerun the same command to resume"]
    done = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.safetensors")}
    assert done and not (out / "index.md").exists() and not list(out.rglob("*.tmp"))

    assert main(["--out", str(out)] + argv) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())
    assert (out / "index.md").exists()
