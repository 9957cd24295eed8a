"""Property-based tests of CLI and config parsing; faults end in a clear error, never a wrong number."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluate.defaults import DEFAULTS
from evaluate.options import parse_budgets
from evaluate.run import BadInput, main, validate
from morse.interleave import Interleave

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=8))
def test_parse_budgets_accepts_exactly_budgets_of_at_least_one(values):
    text = ",".join(repr(v) for v in values)
    if all(v >= 1 for v in values):
        assert parse_budgets(text) == sorted(set(values))
    else:
        with pytest.raises(BadInput, match=">= 1"):
            parse_budgets(text)


@given(st.text(max_size=20))
def test_parse_budgets_never_crashes(text):
    try:
        out = parse_budgets(text)
    except BadInput:
        return
    assert out and all(b >= 1 and math.isfinite(b) for b in out)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=30))
def test_unknown_method_names_are_refused(name):
    from evaluate.methods import valid_names

    names = [n for n in name.split(",") if n.strip()]
    opts = dict(DEFAULTS, methods=name)
    if names and all(n.strip() in valid_names() for n in names):
        assert validate(opts).method_names == tuple(n.strip() for n in names)
    else:
        with pytest.raises(BadInput):
            validate(opts)


@settings(max_examples=300)
@given(st.floats(min_value=1, max_value=200), st.floats(min_value=0.5, max_value=50), st.integers(0, 10))
def test_interleave_plans_always_fit(budget, ratio, d):
    plan = Interleave(d).plan(budget, ratio)
    assert plan[0] and sum(plan) + (len(plan) - sum(plan)) / ratio <= budget + 1e-9
    assert len(plan) - sum(plan) <= d * sum(plan)


@given(st.integers(min_value=-5, max_value=199))
def test_too_few_samples_refused_unless_forced(n):
    with pytest.raises(BadInput):
        validate(dict(DEFAULTS, num_samples=n))
    if n >= 2:
        assert validate(dict(DEFAULTS, num_samples=n, force=True)).num_samples == n


def test_unwritable_output_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import evaluate.sweep as sweep

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "r" / "cache"))

    monkeypatch.setattr(sweep.Path, "mkdir", refuse)
    assert main(["--out", str(tmp_path / "r"), "--methods", "ddim", "--budgets", "2", "--num-samples", "200"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writable --out" in err[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_network_output_is_refused(bad, tmp_path, monkeypatch, capsys):
    from baselines.denoisers import Denoiser

    monkeypatch.setattr(Denoiser, "forward", lambda self, x, t, cond=None: x * 0 + bad)
    # Batch 16: the latency probe before the sweep (31 forwards of the real Dash at the batch size) 4x shorter.
    assert main(["--out", str(tmp_path / "r"), "--methods", "ddim", "--budgets", "2", "--num-samples", "200",
                 "--batch-size", "16"]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not (tmp_path / "r" / "index.md").exists()


def test_results_do_not_depend_on_batch_size(tmp_path):
    import pandas as pd

    args = ["--methods", "ddim,ddpm", "--budgets", "2", "--num-samples", "100", "--force", "--bootstrap", "0"]
    assert main(["--out", str(tmp_path / "a"), "--batch-size", "16"] + args) == 0
    assert main(["--out", str(tmp_path / "b"), "--batch-size", "23"] + args) == 0
    a, b = (pd.read_csv(tmp_path / d / "results.csv") for d in ("a", "b"))
    fd = lambda df: df[df.metric == "fd_fmnist"].set_index("method").value  # noqa: E731
    # Equal up to float32 rounding, not bit for bit: oneDNN picks convolution kernels by batch size (on
    # an AMD EPYC the FDs differed in the 7th digit). Noise drawn per batch instead of per seed moves
    # FD by percents.
    pd.testing.assert_series_equal(fd(a), fd(b), rtol=1e-4)
    nfe = lambda df: df[df.metric.str.startswith("nfe_")].set_index(["method", "metric"]).value  # noqa: E731
    pd.testing.assert_series_equal(nfe(a), nfe(b), rtol=0, atol=0)  # counted exactly, whatever the batches
    assert (nfe(a).xs("nfe_dash", level="metric") == 2.0).all()
