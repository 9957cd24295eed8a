"""Reports: tidy results.csv, Markdown and LaTeX tables, plots, sample grids, index.md.

index.md is written last and atomically: a report folder without it is unfinished.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from baselines.checkpoint import atomic_path, write_text_atomic  # noqa: E402


def pivot(df: pd.DataFrame, metric: str, fmt="{:.2f}") -> pd.DataFrame:
    sub = df[df.metric == metric]
    table = sub.pivot_table(index="method", columns="budget", values="value", aggfunc="first")
    table.columns = [f"{c:g}" for c in table.columns]
    return table.map(lambda v: "" if v != v else fmt.format(v))


def grids(cells, out: Path, n=64) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for cell in cells:
        name = f"{cell.method}-budget{cell.budget:g}.png"
        grid = make_grid(cell.samples[:n].clamp(-1, 1), nrow=8, normalize=True, value_range=(-1, 1), pad_value=1)
        save_image(grid, out / name)
        names.append(name)
    return names


def _save(fig, ax, path: Path) -> None:
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def plot_quality(df: pd.DataFrame, x: str, metric: str, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    q = df[df.metric == metric].set_index(["method", "budget"])["value"]
    xs = df[df.metric == x].set_index(["method", "budget"])["value"]
    lo = df[df.metric == f"{metric}_ci_low"].set_index(["method", "budget"])["value"]
    hi = df[df.metric == f"{metric}_ci_high"].set_index(["method", "budget"])["value"]
    for method in sorted(set(m for m, _ in q.index)):
        keys = sorted(k for k in q.index if k[0] == method)
        xv, yv = [xs[k] for k in keys], [q[k] for k in keys]
        ax.plot(xv, yv, marker="o", label=method)
        if all(k in lo.index for k in keys):
            ax.fill_between(xv, [lo[k] for k in keys], [hi[k] for k in keys], alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x.upper() if x != "nfe_total" else "NFE (all networks)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    _save(fig, ax, path)


def plot_speedup(speed: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if not (speed.status == "ok").any():
        ax.text(0.5, 0.5, "no budget with a defined speedup\n(see speedup.csv for why)", ha="center",
                transform=ax.transAxes)
    for (morse, base), g in speed.groupby(["morse", "baseline"]):
        ok = g[g.status == "ok"]
        if ok.empty:
            continue
        # A percentile interval need not contain the point estimate (few resamples, skewed curves).
        low = (ok.speedup - ok.ci_low).clip(lower=0).fillna(0)
        high = (ok.ci_high - ok.speedup).clip(lower=0).fillna(0)
        ax.errorbar(ok.budget, ok.speedup, yerr=[low, high], marker="o", capsize=3, label=f"{morse} vs {base}")
    ax.axhline(1.0, color="grey", lw=0.8)
    if (speed.status == "ok").any():
        ax.set_xscale("log")
    ax.set_xlabel("baseline budget (LSD)")
    ax.set_ylabel("speedup at equal quality")
    _save(fig, ax, path)


def write_report(out: Path, df: pd.DataFrame, speed: pd.DataFrame, cells, header: dict, quality: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.md").unlink(missing_ok=True)
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    if len(speed):
        speed.to_csv(out / "speedup.csv", index=False)

    tables = {quality: pivot(df, quality), "lsd": pivot(df, "lsd"), "nfe_dash": pivot(df, "nfe_dash", "{:.0f}"),
              "nfe_dot": pivot(df, "nfe_dot", "{:.0f}"), "ms_per_image": pivot(df, "ms_per_image")}
    for extra in ("confidence", "fid"):
        if (df.metric == extra).any():
            tables[extra] = pivot(df, extra, "{:.3f}" if extra == "confidence" else "{:.2f}")
    md = [f"### {name} (columns: budget in LSD)\n\n{t.to_markdown() if hasattr(t, 'to_markdown') else t}\n"
          for name, t in tables.items()]
    write_text_atomic(out / "tables.md", "\n".join(md))
    latex = "\n".join(f"% {name}\n" + t.to_latex() for name, t in tables.items())
    write_text_atomic(out / "tables.tex", latex)

    plot_quality(df, "lsd", quality, out / f"{quality}_vs_lsd.png", f"{header['task']}: {quality} vs LSD")
    plot_quality(df, "nfe_total", quality, out / f"{quality}_vs_nfe.png", f"{header['task']}: {quality} vs NFE")
    if len(speed):
        plot_speedup(speed, out / "speedup.png")
    grid_names = grids(cells, out / "grids")

    lines = [f"# Morse Bench report: {header['task']}", "",
             f"Command: `{header['command']}`", "",
             "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in header.items() if k != "command"]
    lines += ["", f"## {quality} (lower is better; 95% bootstrap CI in results.csv)", "",
              tables[quality].to_markdown(), "", f"![{quality} vs LSD]({quality}_vs_lsd.png)",
              f"![{quality} vs NFE]({quality}_vs_nfe.png)", ""]
    if len(speed):
        lines += ["## Speedup at equal quality", "",
                  "LSD Morse needs for the baseline's quality: monotone (running-minimum) log-log linear "
                  "interpolation of Morse's curve, no extrapolation; saturated budgets excluded.", "",
                  speed.to_markdown(index=False, floatfmt=".3g"), "", "![speedup](speedup.png)", ""]
        for (m, b), g in speed.groupby(["morse", "baseline"]):
            ok = g[g.status == "ok"]
            if ok.empty:
                lines.append(f"* **{m} vs {b}**: no budget with a defined speedup (see the status column)")
            else:
                lines.append(f"* **{m} vs {b}**: mean speedup {ok.speedup.mean():.2f}x over budgets "
                             f"{', '.join(f'{v:g}' for v in ok.budget)}")
        lines.append("")
    lines += ["## Cost", "", "NFE per sample, by network, and sampling wall time per image.", "",
              tables["nfe_dash"].to_markdown(), "", tables["nfe_dot"].to_markdown(), "",
              tables["ms_per_image"].to_markdown(), "", "## Samples", ""]
    lines += [f"![{g}](grids/{g})" for g in grid_names]
    write_text_atomic(out / "index.md", "\n".join(lines) + "\n")
