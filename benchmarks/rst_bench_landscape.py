"""The landscape of an RST-Bench table, as a user would read it: the oracle front (seed means, 95 %
intervals) plotted, and measured answers to three questions.

1. At equal p̄, does the schedule's shape matter, or only p̄, ρ and the G-RST weight? Nested
   least-squares models of a configuration's seed-mean validation accuracy: a full quadratic in
   (p̄, log ρ, G-RST on, log weight) against the same plus the family and two shape descriptors of
   p(t) (its centre of mass in t, and p at the start minus p at the end); the F-test of the added
   terms, and each model's 10-fold cross-validated R² beside the ceiling that seed noise leaves.
2. Where does G-RST sit against plain RST at equal cost? The hypervolume of the front of each alone
   (as a fraction of the oracle's), and the best and mean seed-mean accuracy of each in bins of cost.
3. How stable is the oracle front? The front of a random half of the configurations (200 halves), and
   of the table without one seed, each scored by all seed means, as a fraction of the oracle's.

    python benchmarks/rst_bench_landscape.py mnist1d_noise tabular
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from rst_bench.metric import Truth
from rst_bench.problems import PROBLEMS, TABLES
from rst_bench.table import Table, load_table
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "rst_bench" / "results"
PLOT = Path(__file__).resolve().parent / "rst_bench_landscape.png"
GRID = np.linspace(0, 1, 201)


def shape_of(table: Table, c: int) -> tuple[float, float, float]:
    """p̄, the centre of mass of p(t) in t (0.5 for a constant; 0.5 where p ≡ 0), and p(0) − p(1)."""
    schedule = table.schedule(c)
    p = np.array([schedule(t) for t in GRID])
    centre = float((GRID * p).mean() / p.mean()) if p.mean() > 0 else 0.5
    return float(table.expected_cost[c] - 1), centre, float(p[0] - p[-1])


def features(table: Table, shape: bool) -> np.ndarray:
    """The design matrix over the searched configurations (baselines included)."""
    rows = []
    families = sorted(set(table.families))
    for c in range(table.shape[0]):
        p_bar, centre, slope = shape_of(table, c)
        rho = math.log(table.settings["rho"][c])
        weight = table.settings["grst_weight"][c]
        on = 0.0 if math.isnan(weight) else 1.0
        w = math.log(weight) if on else 0.0
        x = [p_bar, rho, on, w]  # w is 0 where G-RST is off, so on·w would repeat it
        quad = [
            x[i] * x[j]
            for i in range(4)
            for j in range(i, 4)
            if 2 not in (i, j) or (i, j) in ((0, 2), (1, 2))
        ]
        row = [1.0, *x, *quad]
        if shape:
            row += [float(table.families[c] == f) for f in families[1:]]
            row += [centre - 0.5, slope, (centre - 0.5) * p_bar, slope * p_bar]
        rows.append(row)
    return np.array(rows)


def nested_test(y: np.ndarray, small: np.ndarray, large: np.ndarray) -> tuple[float, float, int]:
    """F statistic and p-value of the terms `large` adds to `small` (ordinary least squares)."""
    rss = [float(((y - m @ np.linalg.lstsq(m, y, rcond=None)[0]) ** 2).sum()) for m in (small, large)]
    extra = np.linalg.matrix_rank(large) - np.linalg.matrix_rank(small)
    dof = len(y) - np.linalg.matrix_rank(large)
    f = ((rss[0] - rss[1]) / extra) / (rss[1] / dof)
    return f, float(stats.f.sf(f, extra, dof)), extra


def cv_r2(y: np.ndarray, x: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.empty_like(y)
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        predicted[part] = x[part] @ np.linalg.lstsq(x[train], y[train], rcond=None)[0]
    return 1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum()


def answers(table: Table) -> list[str]:
    truth = Truth.of(table)
    final = table.final("val_accuracy")
    y, k = truth.accuracy, table.shape[1]
    ceiling = 1 - (final.var(1, ddof=1) / k).mean() / y.var(ddof=1)
    small, large = features(table, False), features(table, True)
    f, p, extra = nested_test(y, small, large)
    lines = [
        f"**Shape at equal p̄.** {len(y)} configurations, seed means of {k} seeds. "
        f"p̄, ρ, G-RST: cross-validated R² {cv_r2(y, small):.3f}; with the family and the shape of p(t): "
        f"{cv_r2(y, large):.3f}; ceiling left by seed noise {ceiling:.3f}. The {extra} shape terms: "
        f"F = {f:.2f}, p = {p:.3g}.",
    ]
    off = np.isnan(table.settings["grst_weight"])
    sgd, sam = table.index("SGD"), table.index("SAM")
    searched = ~np.isin(np.arange(len(y)), [sgd, sam])
    rst, grst = np.flatnonzero(off & searched), np.flatnonzero(~off & searched)
    hv = {name: truth.value([*rows, sgd, sam]) for name, rows in (("RST", rst), ("G-RST", grst))}
    lines.append(
        f"**G-RST against RST.** Front of RST alone (with SGD and SAM): {hv['RST']:.3f} of the oracle "
        f"hypervolume; of G-RST alone: {hv['G-RST']:.3f}. Oracle front: {len(truth.oracle)} points, "
        f"{sum(c in set(grst) for c in truth.oracle)} of them G-RST."
    )
    lines += ["", "| cost ratio | RST: n, best, mean | G-RST: n, best, mean |", "|---|---|---|"]
    edges = np.linspace(1.0, 2.0, 6)
    for lo, hi in zip(edges[:-1], edges[1:]):
        cells = []
        for rows in (rst, grst):
            inside = [c for c in rows if lo <= truth.cost[c] < hi or (hi == 2.0 and truth.cost[c] == 2.0)]
            acc = y[inside]
            cells.append(f"{len(inside)}, {acc.max():.2%}, {acc.mean():.2%}" if inside else "0")
        lines.append(f"| {lo:.1f}–{hi:.1f} | {cells[0]} | {cells[1]} |")
    rng = np.random.default_rng(0)
    halves = []
    for _ in range(200):
        keep = sorted({sgd, *rng.choice(len(y), len(y) // 2, replace=False).tolist()})
        halves.append(truth.value(Truth.of(table, configs=keep).oracle))
    drops = [truth.value(Truth.of(table, seeds=[s for s in range(k) if s != d]).oracle) for d in range(k)]
    same = [
        len(set(Truth.of(table, seeds=[s for s in range(k) if s != d]).oracle) & set(truth.oracle))
        for d in range(k)
    ]
    lines += [
        "",
        f"**Stability.** The front of half the configurations scores {np.median(halves):.3f} of the oracle "
        f"(5–95 %: {np.percentile(halves, 5):.3f}–{np.percentile(halves, 95):.3f}, 200 random halves). "
        f"Without one seed, the front found scores {', '.join(f'{d:.3f}' for d in drops)} (seed "
        f"dropped: {', '.join(map(str, range(k)))}) and keeps {', '.join(map(str, same))} of the oracle's "
        f"{len(truth.oracle)} points.",
    ]
    return lines


def plot_front(ax, table: Table, title: str) -> None:
    import matplotlib.ticker

    truth = Truth.of(table)
    final, k = table.final("val_accuracy"), table.shape[1]
    half = stats.t.ppf(0.975, k - 1) * final.std(1, ddof=1) / math.sqrt(k)
    off = np.isnan(table.settings["grst_weight"])
    ax.scatter(
        truth.cost[off], truth.accuracy[off], s=12, color="tab:blue", alpha=0.5, label="RST (seed mean)"
    )
    ax.scatter(
        truth.cost[~off], truth.accuracy[~off], s=12, color="tab:orange", alpha=0.5, label="G-RST (seed mean)"
    )
    front = sorted(truth.oracle, key=lambda c: truth.cost[c])
    ax.step(truth.cost[front], truth.accuracy[front], where="post", color="tab:red", zorder=3)
    ax.errorbar(
        truth.cost[front],
        truth.accuracy[front],
        yerr=half[front],
        fmt="o",
        color="tab:red",
        capsize=3,
        zorder=4,
        label=f"oracle front ({len(front)}; 95 % CI over {k} seeds)",
    )
    for name, marker in (("SGD", "s"), ("SAM", "D")):
        c = table.index(name)
        ax.errorbar(
            truth.cost[c],
            truth.accuracy[c],
            yerr=half[c],
            fmt=marker,
            mfc="none",
            mec="black",
            color="black",
            ms=9,
            capsize=3,
            zorder=5,
            label=name,
        )
    ax.axhline(truth.reference[0], color="0.5", lw=0.6)
    ax.set_xlabel("cost ratio (propagations per step; SGD 1, SAM 2)")
    ax.set_ylabel("validation accuracy, mean over seeds")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problems", nargs="+", choices=sorted(PROBLEMS))
    parser.add_argument("--tables", type=Path, default=TABLES)
    parser.add_argument("--out", type=Path, default=RESULTS / "landscape.md")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(args.problems), figsize=(6.5 * len(args.problems), 4.6), squeeze=False, dpi=110
    )
    text = []
    for ax, name in zip(axes[0], args.problems):
        table = load_table(args.tables / f"{name}.parquet", PROBLEMS[name])
        text += [f"### {name}", "", table.summary(), "", *answers(table), ""]
        plot_front(ax, table, f"{name}: oracle front of {table.shape[0]} configurations")
    fig.tight_layout()
    fig.savefig(args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print("\n".join(text))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
