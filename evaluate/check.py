"""Regression check: a small fixed-seed sweep compared against a committed baseline file.

    python -m evaluate.check [--baseline evaluate/check_baselines/<default task>.json]
    python -m evaluate.check --update --reason "retrained the Dot"

Quality metrics and NFE are compared per method and budget; latency only as ratios measured
within this one run (e.g. Morse vs DDIM at the same budget), since absolute times vary
across machines. Exit 0 within tolerance, 1 on regression, 2 on bad input.
"""

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from baselines.checkpoint import write_text_atomic
from evaluate.defaults import DEFAULTS
from evaluate.provenance import BadInput
from evaluate.run import run

DEFAULT_BASELINE = Path(__file__).resolve().parent / "check_baselines" / f"{DEFAULTS['task']}.json"


def load_baseline(path: Path) -> dict:
    try:
        base = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"baseline file {path} not found; create one with --update --reason ...") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"baseline file {path} is not valid JSON ({e}); restore it from git") from None
    for key in ("sweep", "tolerances"):
        if key not in base:
            raise BadInput(f"baseline file {path} lacks the {key!r} section")
    return base


def measure(sweep: dict, out: Path, spacing: str | None, metrics) -> dict:
    """The baseline's sweep run into `out`; its "latency_reference" is this check's, not a run option."""
    opts = {k: v for k, v in sweep.items() if k != "latency_reference"} | dict(out=str(out), bootstrap=0)
    if spacing:
        opts["spacing"] = spacing
    run(**opts)
    df = pd.read_csv(out / "results.csv")
    values = {}
    for row in df.itertuples():
        if row.metric in metrics or row.metric == "ms_per_image":
            values.setdefault(row.metric, {})[f"{row.method}@{row.budget:g}"] = float(row.value)
    ratios = {}
    ref = sweep.get("latency_reference", "ddim")
    for key, ms in values["ms_per_image"].items():
        method, budget = key.split("@")
        if method != ref and f"{ref}@{budget}" in values["ms_per_image"]:
            ratios[key + f"/{ref}"] = ms / values["ms_per_image"][f"{ref}@{budget}"]
    values["latency_ratio"] = ratios
    del values["ms_per_image"]
    return values


def compare(base: dict, now: dict) -> tuple[pd.DataFrame, bool]:
    rows, failed = [], False
    for metric, tol in base["tolerances"].items():
        for key, expected in base["values"].get(metric, {}).items():
            got = now.get(metric, {}).get(key)
            limit = tol.get("abs", 0.0) + tol.get("rel", 0.0) * abs(expected)
            if got is None:
                status = "MISSING"
            else:
                delta = got - expected
                worse = delta if tol.get("higher_is_worse", True) else -delta
                status = "ok" if abs(delta) <= limit else ("REGRESSION" if worse > 0 else "changed")
                if tol.get("two_sided") and abs(delta) > limit:
                    status = "REGRESSION"
            failed |= status in ("REGRESSION", "MISSING")
            rows.append(dict(metric=metric, cell=key, baseline=expected, now=got, tolerance=f"±{limit:.4g}",
                             status=status))
    return pd.DataFrame(rows), failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluate.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    p.add_argument("--update", action="store_true", help="rewrite the baseline's values from this run")
    p.add_argument("--reason", help="why the baseline changes (required with --update)")
    p.add_argument("--out", type=Path, help="keep this run's report here (default: a temporary folder)")
    p.add_argument("--spacing", help="override the sweep's timestep spacing (e.g. to see a regression)")
    args = p.parse_args(argv)
    tmp = None
    try:
        if args.update and not args.reason:
            raise BadInput("--update needs --reason \"...\" saying why the baseline changes")
        base = load_baseline(args.baseline)
        out = args.out or Path(tmp := tempfile.mkdtemp(prefix="morse-check-"))
        now = measure(base["sweep"], out, args.spacing, set(base["tolerances"]))
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tmp and not args.out:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.update:
        base["values"] = {m: now[m] for m in base["tolerances"]}
        base.setdefault("history", []).append(dict(date=datetime.date.today().isoformat(), reason=args.reason))
        write_text_atomic(args.baseline, json.dumps(base, indent=1) + "\n")
        print(f"baseline {args.baseline} updated: {args.reason}")
        return 0
    table, failed = compare(base, now)
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print("REGRESSION: see the rows marked above" if failed else "all within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
