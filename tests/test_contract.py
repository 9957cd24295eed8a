"""The contract every registered method passes, the cost model's accounting, and the harness's shape."""

import ast
import functools
import re
import shlex
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from baselines.accelerators.ays import SCHEDULES_KEY as AYS_SCHEDULES
from baselines.accelerators.tstitch import SMALL
from baselines.denoisers import Denoiser
from baselines.noise import initial_noise
from baselines.tasks.fmnist import SCHEDULE_CONFIG
from evaluate.cost import CostModel, Latency, cost_model
from evaluate.methods import GROUP, METHODS, Context, resolve
from evaluate.run import main
from morse import Dot, DotConfig

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (1, 8, 8)
SEEDS = list(range(100, 164))
BUDGET = 3
PLAN_RATIO = 4.0  # the N Morse plans with here; pricing at it must fit the budget


def tiny_unet(widths=(8, 16)):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=widths, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval().requires_grad_(False)


class TinyTask:
    name, image_shape, schedule_config = "tiny", SHAPE, SCHEDULE_CONFIG


@pytest.fixture(scope="module")
def setup():
    dash = tiny_unet()
    dot = Dot(dash, DotConfig(width=8, m=2)).eval()
    with torch.no_grad():  # a Dot with a nonzero residual, so Dot steps differ from reuse of z_s
        dot.out.weight.normal_(0, 0.05)
    card = {"dots_per_dash": 2, "dot_ratio_planned": PLAN_RATIO}
    lcm = tiny_unet()  # lcm's distilled model: the Dash's architecture, another network
    ctx = Context(TinyTask(), dash, loaded_dot=(dot, card, "tiny"), loaded_lcm=(lcm, {"distilled": True}, "tiny"))
    small = tiny_unet(widths=(4, 8))  # T-Stitch's small denoiser: the Dash's layout, narrower
    ctx.once(SMALL, lambda: (small, SCHEDULE_CONFIG, "tiny"))
    ctx.options["tstitch_fraction"] = "0.4"  # fmnist's 0.1 gives it no step of 3; the paper's 40% gives it one
    ctx.once(AYS_SCHEDULES, lambda: ({BUDGET: [999, 600, 200]}, "tiny"))  # Align Your Steps' schedule for this Dash
    return Denoiser(dash, SCHEDULE_CONFIG), ctx


@functools.cache
def text_setup():
    """A cross-attention Dash, for the methods that refuse the unconditional one (ToMe, T-GATE)."""
    torch.manual_seed(0)
    dash = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=8,
                                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval().requires_grad_(False)
    return Denoiser(dash, SCHEDULE_CONFIG, 2.0, uncond=torch.zeros(1, 4, 8)), Context(TinyTask(), dash)


def sample(method, denoiser, seeds, batch_size):
    outs, traces = [], []
    for k in range(0, len(seeds), batch_size):
        chunk = seeds[k:k + batch_size]
        x, trace = method(denoiser, initial_noise(chunk, SHAPE), BUDGET, seeds=chunk)
        outs.append(x)
        traces.append(trace)
    return torch.cat(outs), traces


@pytest.mark.parametrize("name", list(METHODS))
def test_registered_method_contract(name, setup):
    denoiser, ctx = setup
    try:
        method = resolve(name, ctx)
    except ValueError as refusal:  # a method that needs cross-attention runs on the text Dash
        assert "\n" not in str(refusal)
        denoiser, ctx = text_setup()
        method = resolve(name, ctx)
    assert method.name == name
    assert method.wraps is None or method.wraps in METHODS
    networks = method.networks(denoiser)
    assert "dash" in networks and networks["dash"].module is denoiser.net

    ref, traces = sample(method, denoiser, SEEDS, 64)
    assert torch.isfinite(ref).all()
    # Same seeds, same samples, whatever the batch, up to float32 rounding (kernels depend on the batch size);
    # noise drawn per batch instead of per seed would differ by O(1).
    by7, _ = sample(method, denoiser, SEEDS[:21], 7)
    torch.testing.assert_close(by7, ref[:21], rtol=1e-3, atol=1e-4)
    by1, _ = sample(method, denoiser, SEEDS[:5], 1)
    torch.testing.assert_close(by1, ref[:5], rtol=1e-3, atol=1e-4)

    # Cost accounting: every call is to a declared network, every declared network is called, and priced at
    # the ratio the method planned with, the cell fits its budget. The Dash is declared by every method, as LSD's
    # unit, and may go uncalled (lcm and Morse-LCM sample a distilled copy of it).
    nfe = traces[0].nfe
    assert set(nfe) <= set(networks) and all(nfe[n] > 0 for n in networks if n != "dash")
    assert sum(nfe.values()) > 0
    planned = getattr(method, "plan_prices", {})  # a method that plans with its own prices (FLOP shares) states them
    seconds = {"dash": 1.0, **{n: planned.get(n, 1.0 / PLAN_RATIO) for n in networks if n != "dash"}}
    cost = CostModel({64: Latency(64, {n: [s] * 5 for n, s in seconds.items()})}, 64, dict.fromkeys(seconds, 0.0),
                     "cpu")
    cell = cost.cell_cost(nfe, 1.0, 0.5, 64)
    assert cell.lsd == pytest.approx(sum(nfe[n] * seconds[n] for n in nfe))
    assert cell.lsd <= BUDGET + 1e-9 and cell.lsd_repeats == pytest.approx([cell.lsd] * 5)


def test_cost_model_measures_every_declared_network_interleaved(setup):
    denoiser, ctx = setup
    methods = [resolve("ddim", ctx), resolve("morse", ctx)]
    cost = cost_model(methods, denoiser, SHAPE, 16, "cpu", repeats=5)
    assert cost.networks == ["dash", "dot"] and sorted(cost.latency) == [1, 16]
    for lat in cost.latency.values():
        assert all(len(v) == 5 and min(v) > 0 for v in lat.repeats_s.values())
    cell = cost.cell_cost({"dash": 2.0, "dot": 4.0}, 1.0, 0.5, 10)
    lat = cost.latency[16]
    assert cell.lsd == pytest.approx(2 + 4 * lat.seconds("dot") / lat.seconds("dash"))
    assert len(cell.lsd_repeats) == 5 and min(cell.lsd_repeats) <= cell.lsd * (1 + 1e-9)
    assert cell.ms_per_image == pytest.approx(100.0) and cell.network_ms_per_image == pytest.approx(50.0)
    summary = cost.ratio_summary("dot")
    assert summary["min"] <= summary["median"] <= summary["max"]
    with pytest.raises(ValueError, match="undeclared"):
        cost.cell_cost({"dash": 1.0, "vae": 1.0}, 1.0, 0.5, 10)


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


PACKAGES = ("baselines", "morse", "evaluate")


def _modules(exclude: Path | None = None):
    for package in PACKAGES:
        yield from (p for p in sorted((ROOT / package).rglob("*.py")) if exclude is None or exclude not in p.parents)


def test_functions_stay_short():
    """run() reads as orchestration; long functions, in any package, are where untested branches hide."""
    run_len = dict(_functions(ROOT / "evaluate" / "run.py"))["run"]
    assert run_len <= 40, f"evaluate.run.run is {run_len} lines"
    long = [f"{p.relative_to(ROOT)}:{name} ({n} lines)" for p in _modules() for name, n in _functions(p) if n > 60]
    assert not long, long


def _task_literals(path: Path, names: set[str]):
    """String constants (not docstrings) naming a task: its name, its `fd_<name>` metric or its `reports/<name>`
    folder. A command-line default (`default=...`, a `Flag(...)` of evaluate.defaults) may name the default task."""
    tree = ast.parse(path.read_text())
    allowed = {id(node.body[0].value) for node in ast.walk(tree)
               if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
               and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "default":
            allowed.add(id(node.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Flag" and node.args:
            allowed.add(id(node.args[0]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed:
            text = node.value
            if text in names or any(f"fd_{n}" in text or f"reports/{n}" in text for n in names):
                yield node.lineno, text


def test_no_task_literal_outside_the_tasks():
    """Task specifics come from the task object: the default task's name is only the CLI's default. Every package
    is checked but the task definitions themselves (baselines/tasks/, with their trainers), for the embedded tasks
    (the default and its text twin), whose names tempt hard-coding; the paper's tasks may be named where a
    published number belongs to one (AYS's schedules, the GPU check's CIFAR-10 network)."""
    from baselines.tasks import TASKS
    from evaluate.defaults import DEFAULTS

    embedded = {name for name in TASKS if name.startswith(DEFAULTS["task"])}
    for p in sorted((ROOT / "evaluate").glob("*.py")):
        text = p.read_text()
        for literal in ("Fashion-MNIST", "fashion", ".classes", "fd_fmnist"):
            assert literal not in text, f"{p.name} names {literal!r}"
    found = [f"{p.relative_to(ROOT)}:{line} {text!r}" for p in _modules(exclude=ROOT / "baselines" / "tasks")
             for line, text in _task_literals(p, embedded)]
    assert not found, found


def test_median_helpers_agree_with_numpy():
    lat = Latency(4, {"dash": [3.0, 1.0, 2.0, 5.0, 4.0], "dot": [1.0, 0.5, 1.0, 1.0, 2.0]})
    assert lat.seconds("dash") == 3.0
    np.testing.assert_allclose(lat.ratio("dot"), [3.0, 2.0, 2.0, 5.0, 2.0])


def _readme_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\w*\n(.*?)```", body, re.S)


def _write_module(tmp_path: Path, code: str) -> None:
    """The README's file, at the path its first line names, importable."""
    path = tmp_path / code.splitlines()[0].removeprefix("# ")
    path.parent.mkdir(exist_ok=True)
    path.write_text(code)


def test_readme_accelerator(tmp_path, monkeypatch, setup):
    """What "Add an accelerator" says: its file plus its entry point give a method that passes the contract
    and gets a speedup over the solver it wraps, priced by the cost model."""
    code, toml = _readme_blocks("Add an accelerator")[:2]
    _write_module(tmp_path, code)
    monkeypatch.syspath_prepend(str(tmp_path))
    # What installing the package does: the registry gains its entry point's METHODS.
    ((ep_name, value),) = tomllib.loads(toml)["project"]["entry-points"][GROUP].items()
    ((name, factory),) = EntryPoint(ep_name, value, GROUP).load().items()
    monkeypatch.setitem(METHODS, name, factory)
    test_registered_method_contract(name, setup)

    out = tmp_path / "r"
    # Batch 25: per image as fast as 64 on a CPU, and the latency probe (31 forwards at the batch size) 2.5x shorter.
    assert main(["--methods", f"{name},ddim", "--budgets", "2,3", "--num-samples", "100", "--force", "--bootstrap",
                 "0", "--batch-size", "25", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv").set_index(["method", "budget", "metric"]).value
    assert df[(name, 3.0, "nfe_dash")] == 3 and df[(name, 3.0, "lsd")] == pytest.approx(3.0)
    speed = pd.read_csv(out / "speedup.csv")
    assert ((speed.method == name) & (speed.baseline == "ddim")).any()


def test_readme_task(tmp_path, monkeypatch):
    """What "Add a task" says: its file and its command, on a tiny network of the same class saved with
    save_pretrained, score the task's declared metric through the task's own loader."""
    code, command = _readme_blocks("Add a task")[:2]
    _write_module(tmp_path, code)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(tmp_path / "dash")
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048) * 0.01)
    argv = shlex.split(command)[3:]  # after "python -m evaluate.run"
    argv = [str(tmp_path / "dash") if a == "DIR" else str(tmp_path / a) if a == "stats.npz" else a for a in argv]
    out = tmp_path / "r"
    # Fewer samples than a real run, nothing else changed: Inception costs ~0.2-1 s per image on a CPU (4 cells).
    assert main(argv + ["--num-samples", "5", "--force", "--fid-samples", "5", "--bootstrap", "0",
                        "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    fid = df[df.metric == "fid"]
    assert len(fid) == 4 and np.isfinite(fid.value).all() and (fid.value > 0).all()
    assert (out / "index.md").exists()
