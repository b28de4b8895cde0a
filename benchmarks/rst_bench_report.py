"""The report of the replays: per problem and worker count, each searcher's anytime curve (IQM over
search seeds, 95 % bootstrap interval), the compute it needs to reach 80 / 90 / 95 % of the oracle
hypervolume, and its optimism gap; a Markdown table, benchmarks/search_efficiency.png, and the
cost-aware pipelines against today's (issue 24's goals) in benchmarks/cost_aware_search.png.

    python benchmarks/rst_bench_report.py mnist1d_noise tabular
"""

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from rst_bench.metric import compute_to_reach, iqm, iqm_interval
from rst_bench.problems import PROBLEMS

RESULTS = Path(__file__).resolve().parent / "rst_bench" / "results"
PLOT = Path(__file__).resolve().parent / "search_efficiency.png"
LEVELS = (0.8, 0.9, 0.95)
AT = (
    9.0,
    18.0,
    36.0,
)  # SAM-equivalents at which values are tabulated (18: today's default spends about that)


def value_at(curve: list, compute: float) -> float:
    return next((v for c, v, _ in reversed(curve) if c <= compute), 0.0)


def gap_at(curve: list, compute: float) -> float:
    return next((o - v for c, v, o in reversed(curve) if c <= compute), 0.0)


def median_reach(values: list[float]) -> str:
    reached = sum(math.isfinite(v) for v in values)
    median = float(np.median(values))
    return f"{median:.1f}" if math.isfinite(median) else f"– ({reached}/{len(values)})"


def cell(values) -> str:
    mid, low, high = iqm_interval(values)
    return f"{mid:.3f} [{low:.3f}, {high:.3f}]"


def final(run: dict) -> tuple[float, float]:
    """(value, optimism gap) of a run's last reported front."""
    return (run["curve"][-1][1], run["curve"][-1][2] - run["curve"][-1][1]) if run["curve"] else (0.0, 0.0)


def summarise(results: list[dict]) -> tuple[list[str], dict]:
    """Markdown rows per (workers, searcher, stopping, budget or trial count), and the curves to plot.
    An Optuna searcher's row: its value at fixed compute, its median compute to reach each level, its
    optimism gap at the end of its budget. The pipeline's: a row per trial count (value and median
    compute at its end); it reaches a level at the first trial count whose IQM value does."""
    groups = defaultdict(list)
    for r in results:
        groups[(r["workers"], r["searcher"], r["stopping"], r["budget"] or 0, r["num_samples"] or 0)].append(
            r
        )
    header = (
        "| workers | searcher | stopping | "
        + " | ".join(f"value at {a:g}" for a in AT)
        + " | "
        + " | ".join(f"to {int(100 * level)} %" for level in LEVELS)
        + " | optimism gap | trials (pruned) |"
    )
    lines, curves, pipeline = [header, "|" + "---|" * (header.count("|") - 1)], {}, defaultdict(list)
    for (workers, name, stopping, budget, samples), runs in sorted(groups.items()):
        trials = (
            f"{np.median([r['trials'] for r in runs]):.0f} ({np.median([r['pruned'] for r in runs]):.0f})"
        )
        if not samples:
            label = name if budget == max(AT) else f"{name} (budget {budget:g})"
            cells = [cell([value_at(r["curve"], a) for r in runs]) if a <= budget else "–" for a in AT]
            reach = [
                median_reach([compute_to_reach([(c, v) for c, v, _ in r["curve"]], lv) for r in runs])
                for lv in LEVELS
            ]
            gap = iqm([gap_at(r["curve"], budget) for r in runs])
            grid = np.linspace(0, budget, int(4 * budget) + 1)
            matrix = np.array([[value_at(r["curve"], g) for g in grid] for r in runs])
            curves[(name, stopping, workers)] = (grid, *iqm_interval(matrix, resamples=1000))
        else:
            values = [final(r)[0] for r in runs]
            compute = float(np.median([r["compute"] for r in runs]))
            label = f"{name} ({samples} trials + confirmation)"
            cells, reach = [f"{cell(values)} at {compute:.1f}", "", ""], ["", "", ""]
            gap = iqm([final(r)[1] for r in runs])
            pipeline[(workers, name, stopping)].append((samples, compute, *iqm_interval(values)))
        lines.append(
            f"| {workers} | {label} | {stopping} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(reach)
            + f" | {gap:+.3f} | {trials} |"
        )
    lines += [
        "",
        "rst-tune's pipeline: SAM-equivalents (median) at the first trial count whose IQM reaches a level:",
        "",
        "| workers | searcher | stopping | to 80 % | to 90 % | to 95 % |",
        "|---|---|---|---|---|---|",
    ]
    for (workers, name, stopping), points in sorted(pipeline.items()):
        points.sort()
        reach = [next((f"{c:.1f} ({n} trials)" for n, c, v, _, _ in points if v >= lv), "–") for lv in LEVELS]
        lines.append(f"| {workers} | {name} | {stopping} | " + " | ".join(reach) + " |")
        curves[(name, stopping, workers)] = [(c, v, lo, hi) for _, c, v, lo, hi in points]
    return lines, curves


PIPELINES = {  # the pipeline runs the goals compare: (search, stopping) -> what it is
    ("tables", "none"): "today's default: MO-TPE on p_start/p_end…, no stopping, 3 seeds each",
    ("coordinates", "none"): "1. cost as a coordinate (mean, tilt) alone",
    ("known_cost", "none"): "2. the known-cost sampler alone",
    ("tables", "hypervolume"): "3. early stopping in propagations alone",
    ("sequential", "none"): "4. sequential, paired confirmation alone",
    ("default", "none"): "1 + 2 + 4 (no early stopping)",
    ("default", "hypervolume"): "the new default: 1 + 2 + 3 + 4",
}


def goals(results: list[dict], workers: int = 2) -> list[str]:
    """Issue 24's goals on one table: each pipeline's IQM value and median compute per trial count,
    the compute at which it first matches today's default at 12 trials and first reaches 90 % of the
    oracle, beside MO-TPE + ASHA's median compute to 90 % and its optimism gap."""
    runs = defaultdict(list)
    for r in results:
        if r["workers"] == workers:
            runs[(r.get("search", "tables"), r["searcher"], r["stopping"], r["num_samples"] or 0)].append(r)
    today = runs.get(("tables", "rst_tune", "none", 12))
    if not today:
        return []
    target = iqm([final(r)[0] for r in today])
    asha = runs.get(("tables", "tpe", "asha", 0), [])
    tpe = runs.get(("tables", "tpe", "none", 0), [])
    to90 = median_reach([compute_to_reach([(c, v) for c, v, _ in r["curve"]], 0.9) for r in asha])
    gap = iqm([gap_at(r["curve"], 36.0) for r in tpe])
    lines = [
        f"Today's default at 12 trials: IQM value {target:.3f} at "
        f"{np.median([r['compute'] for r in today]):.1f} SAM-equivalents. MO-TPE + ASHA reaches 90 % at "
        f"a median of {to90}; MO-TPE's optimism gap at 36: {gap:+.3f}.",
        "",
        "| pipeline | "
        + " | ".join(f"{n} trials" for n in (6, 9, 12, 18, 24, 36))
        + " | matches today's at | reaches 90 % at | optimism gap (12 trials) |",
        "|---|" + "---|" * 9,
    ]
    for (search, stopping), what in PIPELINES.items():
        points = []
        for n in (6, 9, 12, 18, 24, 36):
            group = runs.get((search, "rst_tune", stopping, n))
            if group:
                points.append(
                    (n, float(np.median([r["compute"] for r in group])), iqm([final(r)[0] for r in group]))
                )
        if not points:
            continue
        cells = {n: f"{v:.3f} at {c:.1f}" for n, c, v in points}
        match = next((f"{c:.1f} ({n} trials)" for n, c, v in points if v >= target), "–")
        reach = next((f"{c:.1f} ({n} trials)" for n, c, v in points if v >= 0.9), "–")
        twelve = runs.get((search, "rst_tune", stopping, 12), [])
        gap = f"{iqm([final(r)[1] for r in twelve]):+.3f}" if twelve else "–"
        lines.append(
            f"| {what} | "
            + " | ".join(cells.get(n, "–") for n in (6, 9, 12, 18, 24, 36))
            + f" | {match} | {reach} | {gap} |"
        )
    return lines


def headline(results: list[dict], workers: int) -> list[str]:
    """One row per searcher at `workers`: IQM [95 % CI] of its value at 18 and 36 SAM-equivalents
    without stopping, its median compute to 80 %, its value at 36 with ASHA and with pareto_fair, and
    its optimism gap; the pipeline at its default 12 trials and at 24."""
    runs = defaultdict(list)
    for r in results:
        if r["workers"] == workers:
            runs[(r["searcher"], r["stopping"], r["num_samples"] or 0)].append(r)
    lines = [
        f"| searcher ({workers} workers) | at 18, no stopping | at 36, no stopping | to 80 % | at 36, ASHA "
        "| at 36, pareto_fair | optimism gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["searcher"] for r in results):
        if name.startswith("rst_tune"):
            for samples in (12, 24):
                base = runs.get((name, "none", samples))
                if base:
                    value, low, high = iqm_interval([final(r)[0] for r in base])
                    compute = np.median([r["compute"] for r in base])
                    stopped = [
                        cell([final(r)[0] for r in runs[(name, rule, samples)]])
                        if runs.get((name, rule, samples))
                        else "–"
                        for rule in ("asha", "pareto_fair")
                    ]
                    lines.append(
                        f"| rst-tune pipeline, {samples} trials + confirmation | {value:.3f} "
                        f"[{low:.3f}, {high:.3f}] at {compute:.1f} | | | {stopped[0]} | {stopped[1]} "
                        "| +0.000 (by construction) |"
                    )
            continue
        base = runs.get((name, "none", 0), [])
        if not base:
            continue
        budget = base[0]["budget"]
        at = [cell([value_at(r["curve"], a) for r in base]) if a <= budget else "–" for a in (18.0, 36.0)]
        reach = median_reach([compute_to_reach([(c, v) for c, v, _ in r["curve"]], 0.8) for r in base])
        stopped = [
            cell([value_at(r["curve"], 36.0) for r in runs[(name, rule, 0)]])
            if runs.get((name, rule, 0))
            else "–"
            for rule in ("asha", "pareto_fair")
        ]
        gap = iqm([gap_at(r["curve"], budget) for r in base])
        label = name if budget >= 36 else f"{name} (budget {budget:g})"
        lines.append(f"| {label} | {at[0]} | {at[1]} | {reach} | {stopped[0]} | {stopped[1]} | {gap:+.3f} |")
    return lines


def _axes(ax, title: str) -> None:
    ax.axhline(0.9, color="0.5", lw=0.6)
    ax.set_xlim(0, max(AT))
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.set_xlabel("compute spent (SAM-equivalents: full trainings at p ≡ 1), confirmation included")
    ax.set_ylabel("hypervolume of the reported front / oracle")
    ax.grid(alpha=0.3)


def plot(all_curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(all_curves)
    workers = sorted({k[2] for curves in all_curves.values() for k in curves})
    fig, axes = plt.subplots(
        len(problems), len(workers), figsize=(6.5 * len(workers), 4.2 * len(problems)), squeeze=False, dpi=110
    )
    names = ["random", "tpe", "tpe_mv", "nsga2", "gp", "rst_tune", "known_cost", "botorch_cost"]
    names += [
        "rst_tune [default]",
        "rst_tune [coordinates]",
        "rst_tune [known_cost]",
        "rst_tune [sequential]",
    ]
    names += ["tpe [default]"]
    colours = dict(zip(names, [*plt.cm.tab10.colors, *plt.cm.Dark2.colors]))
    styles = {"none": "-", "asha": "--", "pareto_fair": ":", "hypervolume": "-."}
    for i, problem in enumerate(problems):
        for j, w in enumerate(workers):
            ax = axes[i][j]
            for (name, stopping, ww), data in sorted(all_curves[problem].items()):
                if ww != w or stopping == "hypervolume" or "[" in name or name not in colours:
                    continue  # the RST-Bench issue's searchers; the cost-aware ones: plot_cost_aware
                colour = colours.get(name, "black")
                if isinstance(data, list):
                    data.sort()
                    xs = [d[0] for d in data]
                    ax.errorbar(
                        xs,
                        [d[1] for d in data],
                        yerr=[[d[1] - d[2] for d in data], [d[3] - d[1] for d in data]],
                        color=colour,
                        linestyle=styles[stopping],
                        marker="o",
                        ms=4,
                        capsize=2,
                        label=f"{name} pipeline, {stopping}",
                    )
                else:
                    grid, mid, low, high = data
                    ax.plot(grid, mid, color=colour, linestyle=styles[stopping], label=f"{name}, {stopping}")
                    ax.fill_between(grid, low, high, color=colour, alpha=0.08)
            _axes(ax, f"{problem}, {w} workers")
    axes[0][-1].legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("RST-Bench replays: IQM over search seeds, 95 % bootstrap band", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


COST_AWARE_PLOT = Path(__file__).resolve().parent / "cost_aware_search.png"


def plot_cost_aware(all_curves: dict, path: Path, workers: int = 2) -> None:
    """Issue 24's plot: per problem, each pipeline of `PIPELINES` (IQM value against median compute
    over its trial counts) beside MO-TPE, MO-TPE + ASHA and the known-cost sampler on their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_curves), figsize=(7 * len(all_curves), 4.8), squeeze=False, dpi=110)
    colours = iter([*plt.cm.tab10.colors, *plt.cm.Dark2.colors])
    names = {key: what for key, what in PIPELINES.items()}
    singles = {("tpe", "none"): "MO-TPE alone", ("tpe", "asha"): "MO-TPE + ASHA"}
    singles |= {("known_cost [default]", "none"): "known-cost sampler alone"}
    styles = {key: next(colours) for key in [*names, *singles]}
    for ax, (problem, curves) in zip(axes[0], all_curves.items()):
        for (search, stopping), what in names.items():
            name = "rst_tune" if search == "tables" else f"rst_tune [{search}]"
            data = curves.get((name, stopping, workers))
            if isinstance(data, list):
                data = sorted(data)
                ax.errorbar(
                    [d[0] for d in data],
                    [d[1] for d in data],
                    yerr=[[d[1] - d[2] for d in data], [d[3] - d[1] for d in data]],
                    color=styles[(search, stopping)],
                    marker="o",
                    ms=4,
                    capsize=2,
                    lw=2.2 if (search, stopping) == ("default", "hypervolume") else 1.0,
                    label=what,
                )
        for (name, stopping), what in singles.items():
            data = curves.get((name, stopping, workers))
            if data is not None and not isinstance(data, list):
                grid, mid, low, high = data
                ax.plot(grid, mid, color=styles[(name, stopping)], linestyle="--", label=what)
                ax.fill_between(grid, low, high, color=styles[(name, stopping)], alpha=0.08)
        _axes(ax, f"{problem}, {workers} workers")
    axes[0][-1].legend(fontsize=6.5, loc="lower right")
    fig.suptitle(
        "Cost-aware search on RST-Bench: IQM over 20 search seeds, 95 % bootstrap interval", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problems", nargs="+", choices=sorted(PROBLEMS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    out, all_curves = [], {}
    for problem in args.problems:
        results = [json.loads(line) for line in (args.results / f"{problem}.jsonl").read_text().splitlines()]
        seeds = len({r["seed"] for r in results})
        out += [f"### {problem}: issue 24's goals (2 workers)", "", *goals(results), ""]
        for r in results:  # a search other than the tables' own is part of the searcher's name
            if r.get("search", "tables") != "tables":
                r["searcher"] = f"{r['searcher']} [{r['search']}]"
        lines, curves = summarise(results)
        all_curves[problem] = curves
        out += [f"### {problem}: {len(results)} replays, {seeds} search seeds", ""]
        for workers in sorted({r["workers"] for r in results}):
            out += [*headline(results, workers), ""]
        out += ["All rows:", "", *lines, ""]
        replay_s = [r["replay_s"] for r in results]
        out += [
            f"Replay time: median {np.median(replay_s):.2f} s, total {sum(replay_s) / 60:.1f} CPU-min.",
            "",
        ]
    text = "\n".join(out)
    (args.results / "search_efficiency.md").write_text(text)
    print(text)
    plot(all_curves, args.plot)
    plot_cost_aware(all_curves, COST_AWARE_PLOT)
    print(f"wrote {args.results / 'search_efficiency.md'}, {args.plot} and {COST_AWARE_PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
