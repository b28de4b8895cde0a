"""The Pareto front of a search, read from its Optuna study: table, CSV, JSON, plot and hypervolume.

The front is over val_accuracy (higher is better) and a cost on the search's axis (lower is better:
`rst_tune.search._cost_axis`) of the trials that trained every epoch (COMPLETE, and within the budget
when there is one), whatever the objective. Test accuracy is shown beside it, never used to choose.
The hypervolume is the area the front dominates above the reference point (val_accuracy 0, and the
propagations of the dearest trial had it taken SAM's step at every step, or the most device_seconds
a trial took), divided by that cost.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import optuna

from rst_tune.search._cost_axis import CostAxis
from rst_tune.search._record import TrialRow, trial_rows


def state_counts(rows: Sequence[TrialRow]) -> dict[str, int]:
    """How many trials are in each Optuna state, e.g. {"COMPLETE": 14, "PRUNED": 2}."""
    return dict(Counter(row.state for row in rows))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (accuracy, cost) points that no other point dominates (at least as accurate and
    at most as costly, strictly better in one)."""
    return [
        i
        for i, (a, c) in enumerate(points)
        if not any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for a2, c2 in points)
    ]


def hypervolume(front: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area of {(a, c): a point of `front` has accuracy ≥ a and cost ≤ c}, with a ≥ reference[0] and
    c ≤ reference[1]. `front` must be mutually non-dominated."""
    area, below = 0.0, reference[0]
    for accuracy, cost in sorted(p for p in front if p[0] > reference[0] and p[1] < reference[1]):
        area += (accuracy - below) * (reference[1] - cost)
        below = accuracy
    return area


@dataclass(frozen=True)
class ConfirmedPoint:
    """A point of the search trained again with fresh seeds: means and 95 % intervals (Student t) over
    the seeds that trained every epoch. It is on the confirmed front unless another confirmed point
    costs no more and is more accurate on validation with a paired 95 % interval above zero
    (`beaten_by`: that point's search trial)."""

    trial: int  # the search trial it confirms
    label: str
    seeds: int
    val_accuracy_mean: float
    val_accuracy_ci: tuple[float, float]
    test_accuracy_mean: float
    test_accuracy_ci: tuple[float, float]
    cost_ratio_mean: float
    propagations_mean: float
    device_seconds_mean: float
    epochs: int  # its configuration's epochs and batch size: its place on the cost axis
    batch_size: int
    on_front: bool
    beaten_by: int | None = None
    baseline: str | None = None
    # val_accuracy minus the SGD baseline's over the same seeds: mean and paired 95 % interval
    vs_sgd: tuple[float, float, float] | None = None
    method: str = "rst"  # its method's name (rst_tune.methods)

    def to_json(self) -> dict[str, Any]:
        nan_free = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        return {
            k: [nan_free(x) for x in v] if isinstance(v, tuple) else nan_free(v)
            for k, v in asdict(self).items()
        }


@dataclass
class ParetoReport:
    files: ClassVar[tuple[str, ...]] = (
        "pareto.csv",
        "pareto.json",
        "pareto.png",
        "pareto.html",
        "pareto.txt",
    )

    name: str
    objective: str
    budget: float | None
    axis: CostAxis
    trials: list[TrialRow]
    front: list[TrialRow]
    reference_cost: float | None
    hypervolume: float | None
    confirmed: list[ConfirmedPoint] = field(default_factory=list)  # empty: not confirmed (yet)
    run_dir: Path | None = None  # the run folder, where `rst_tune.api` ran it

    @property
    def cost(self) -> str:
        """The axis's cost: "propagations" or "device_seconds"."""
        return self.axis.name

    def x(self, row: TrialRow) -> float:
        """A trial's place on the plot (`CostAxis.x`)."""
        return self.axis.x(row)

    def confirmed_cost(self, point: ConfirmedPoint) -> float:
        """A confirmed point's cost (`CostAxis.cost`), the mean over its seeds."""
        return self.axis.cost(point.cost_ratio_mean, point.epochs, point.batch_size)

    def confirmed_x(self, point: ConfirmedPoint) -> float:
        """A confirmed point's place on the plot: the mean over its seeds."""
        return point.device_seconds_mean if self.cost == "device_seconds" else self.confirmed_cost(point)

    def x_label(self) -> str:
        return self.axis.label()

    def row_json(self, row: TrialRow) -> dict[str, Any]:
        """A trial as pareto.json lists it: its record and metrics, and its `cost` on the axis."""
        return {**row.to_json(), "cost": self.axis.cost_of(row) if row.metrics else None}

    def complete(self) -> list[TrialRow]:
        return [r for r in self.trials if r.state == "COMPLETE"]

    def stopped_early(self) -> list[TrialRow]:
        """Trials a scheduler stopped after at least one epoch (their metrics are partial)."""
        return [r for r in self.trials if r.state == "PRUNED" and r.val_accuracy is not None]

    def counts(self) -> dict[str, int]:
        return state_counts(self.trials)

    def summary_metrics(self) -> dict[str, float]:
        return {} if self.hypervolume is None else {"hypervolume": self.hypervolume}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective": self.objective,
            "budget": self.budget,
            "counts": self.counts(),
            "cost": self.cost,
            "axis": self.axis.to_json(),
            "reference_point": {"val_accuracy": 0.0, self.cost: self.reference_cost},
            "hypervolume": self.hypervolume,
            "front": [self.row_json(r) for r in self.front],
            "confirmed": [point.to_json() for point in self.confirmed],
            "trials": [self.row_json(r) for r in self.trials],
        }

    def table(self) -> str:
        lines = [
            f"Pareto front (val_accuracy up, {self.cost} down):",
            f"{'trial':>5}  {'val_acc':>7}  {'test_acc':>8}  {'cost':>5}  {'propagations':>12}  "
            f"{'device_s':>8}  config",
        ]
        for row in self.front:
            tag = f"  [{row.baseline}]" if row.baseline else ""
            test = "–" if row.test_accuracy is None else f"{row.test_accuracy:.2%}"
            lines.append(
                f"{row.number:>5}  {row.val_accuracy:>7.2%}  {test:>8}  {self.axis.cost_of(row):>5.3f}  "
                f"{row.propagations:>12.0f}  {row.device_seconds:>8.1f}  {row.label}{tag}"
            )
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts().items()))
        lines.append(f"{len(self.trials)} trials ({counts}); {len(self.front)} on the front")
        if self.hypervolume is not None:
            reference = (
                f"propagations {self.reference_cost:.0f} = SAM at every step of the dearest trial"
                if self.cost == "propagations"
                else f"device_seconds {self.reference_cost:.1f} = the longest trial"
            )
            lines.append(
                f"hypervolume {self.hypervolume:.4f} (reference point: val_accuracy 0, {reference}; "
                f"area divided by that cost)"
            )
        if self.confirmed:
            lines += ["", *self.confirmed_table()]
        return "\n".join(lines)

    def confirmed_table(self) -> list[str]:
        counts = sorted({point.seeds for point in self.confirmed})
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        lines = [
            f"Confirmed front ({seeds} fresh seeds per point; a point leaves it when another costs no more "
            "and is more accurate on validation, paired interval above zero):",
            f"{'trial':>5}  {'seeds':>5}  {'val_acc (95 % CI)':>23}  {'test_acc (95 % CI)':>23}  "
            f"{'vs SGD, pp (paired CI)':>22}  {'cost':>5}  {'device_s':>8}  config",
        ]

        def interval(mean: float, ci: tuple[float, float]) -> str:
            if math.isnan(mean):
                return "–"
            return f"{mean:.2%} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"

        def versus(difference: tuple[float, float, float] | None) -> str:
            if difference is None or math.isnan(difference[1]):
                return "–"
            return f"{100 * difference[0]:+.1f} ({100 * difference[1]:+.1f}…{100 * difference[2]:+.1f})"

        for point in sorted(self.confirmed, key=lambda p: (not p.on_front, self.confirmed_x(p))):
            tag = f"  [{point.baseline}]" if point.baseline else ""
            verdict = "" if point.on_front else f"  (beaten by trial {point.beaten_by})"
            lines.append(
                f"{point.trial:>5}  {point.seeds:>5}  "
                f"{interval(point.val_accuracy_mean, point.val_accuracy_ci):>23}  "
                f"{interval(point.test_accuracy_mean, point.test_accuracy_ci):>23}  "
                f"{versus(point.vs_sgd):>22}  {self.confirmed_cost(point):>5.3f}  "
                f"{point.device_seconds_mean:>8.1f}  {point.label}{tag}{verdict}"
            )
        kept = sum(point.on_front for point in self.confirmed)
        trainings = sum(point.seeds for point in self.confirmed)
        spent = sum(
            point.seeds * self.axis.propagations(point.propagations_mean, point.batch_size)
            for point in self.confirmed
        )
        searched = sum(self.axis.propagations_of(r) for r in self.trials if r.metrics)
        lines.append(
            f"{len(self.confirmed)} points confirmed with {seeds} seeds each; {kept} on the confirmed front. "
            f"Compute: {trainings} confirmation trainings, {spent:,.0f} propagations; the search "
            f"{searched:,.0f} (stopped trials' epochs included)"
        )
        return lines


def build_report(study: optuna.Study, objective: str, budget: float | None, axis: CostAxis) -> ParetoReport:
    """The front of `study`'s complete trials on `axis`."""
    rows = trial_rows(study)
    done = [r for r in rows if r.state == "COMPLETE" and (budget is None or axis.cost_of(r) <= budget)]
    front = [done[i] for i in pareto_front([(r.val_accuracy, axis.value(r)) for r in done])]
    front.sort(key=lambda r: (axis.value(r), -r.val_accuracy))
    reference = axis.reference(done)
    volume = (
        hypervolume([(r.val_accuracy, axis.value(r)) for r in front], (0.0, reference)) / reference
        if reference
        else None
    )
    return ParetoReport(study.study_name, objective, budget, axis, rows, front, reference, volume)


def write_report(report: ParetoReport, folder: str | Path) -> list[Path]:
    """pareto.csv (the front), pareto.json (front, every trial, hypervolume), pareto.png and
    pareto.html (the same plot, interactive: hover a point for its trial and config), pareto.txt
    (the table)."""
    folder = Path(folder)
    csv_path, json_path, png_path, html_path, txt_path = (folder / name for name in report.files)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        columns = [
            "number",
            "method",
            "label",
            "val_accuracy",
            "test_accuracy",
            "cost_ratio",
            "propagations",
            "device_seconds",
            "expected_cost",
            "seed",
            "ray_trial_id",
            "baseline",
        ]
        writer.writerow([*columns, "cost"])
        for row in report.front:
            writer.writerow([*(getattr(row, c) for c in columns), report.axis.cost_of(row)])
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    txt_path.write_text(report.table() + "\n")
    plot(report, png_path)
    plot_html(report, html_path)
    return [folder / name for name in report.files]


def plot_html(report: ParetoReport, path: Path) -> None:
    import plotly.graph_objects as go

    def points(rows: list[TrialRow], name: str, **style) -> go.Scatter:
        return go.Scatter(
            x=[report.x(r) for r in rows],
            y=[r.val_accuracy for r in rows],
            name=name,
            **style,
            text=[f"trial {r.number}: {r.label}" + (f" [{r.baseline}]" if r.baseline else "") for r in rows],
            hovertemplate="%{text}<br>"
            + report.x_label()
            + " %{x:.3f}, val_accuracy %{y:.2%}<extra></extra>",
        )

    complete, stopped = report.complete(), report.stopped_early()
    fig = go.Figure(
        [
            points(complete, f"trials ({len(complete)})", mode="markers", marker={"color": "grey"}),
            points(
                stopped,
                f"stopped early ({len(stopped)})",
                mode="markers",
                marker={"color": "grey", "symbol": "circle-open"},
            ),
            points(
                report.front,
                f"Pareto front ({len(report.front)})",
                mode="lines+markers",
                line={"shape": "hv", "color": "crimson"},
                marker={"size": 10},
            ),
        ]
    )
    fig.update_layout(
        title=f"{report.name}: accuracy against compute ({report.objective})",
        xaxis_title=report.x_label(),
        yaxis_title="validation accuracy",
        yaxis_tickformat=".1%",
    )
    fig.write_html(path, include_plotlyjs=True)


def _seed_range(points: Sequence[ConfirmedPoint]) -> str:
    low, high = min(p.seeds for p in points), max(p.seeds for p in points)
    return str(low) if low == high else f"{low}–{high}"


def plot(report: ParetoReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    complete, stopped = report.complete(), report.stopped_early()
    ax.scatter(
        [report.x(r) for r in complete],
        [r.val_accuracy for r in complete],
        s=22,
        color="0.6",
        label=f"trials ({len(complete)})",
        zorder=2,
    )
    if stopped:
        ax.scatter(
            [report.x(r) for r in stopped],
            [r.val_accuracy for r in stopped],
            s=22,
            facecolors="none",
            edgecolors="0.6",
            label=f"stopped early ({len(stopped)}, partial)",
            zorder=2,
        )
    ax.step(
        [report.x(r) for r in report.front],
        [r.val_accuracy for r in report.front],
        where="post",
        color="tab:red",
        zorder=3,
    )
    ax.scatter(
        [report.x(r) for r in report.front],
        [r.val_accuracy for r in report.front],
        s=40,
        color="tab:red",
        label=f"Pareto front ({len(report.front)})",
        zorder=4,
    )
    for name, marker in (("SGD", "s"), ("SAM", "D")):
        rows = [r for r in complete if r.baseline == name]
        if rows:
            ax.scatter(
                [report.x(r) for r in rows],
                [r.val_accuracy for r in rows],
                s=90,
                marker=marker,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                label=f"{name} baseline",
                zorder=5,
            )
    for on_front, color, name in (
        (True, "tab:green", "confirmed front"),
        (False, "tab:olive", "confirmed, beaten"),
    ):
        points = [point for point in report.confirmed if point.on_front == on_front]
        if points:
            ax.errorbar(
                [report.confirmed_x(point) for point in points],
                [point.val_accuracy_mean for point in points],
                yerr=[
                    [point.val_accuracy_mean - point.val_accuracy_ci[0] for point in points],
                    [point.val_accuracy_ci[1] - point.val_accuracy_mean for point in points],
                ],
                fmt="^",
                color=color,
                capsize=4,
                label=f"{name} ({len(points)}; mean of {_seed_range(points)} fresh seeds, 95 % CI)",
                zorder=6,
            )
    if len({r.method for r in complete}) > 1:  # name each method on the confirmed front, else the front
        named = [(report.confirmed_x(p), p.val_accuracy_mean, p.method) for p in report.confirmed] or [
            (report.x(r), r.val_accuracy, r.method) for r in report.front
        ]
        for x, y, method in named:
            ax.annotate(method, (x, y), xytext=(4, -9), textcoords="offset points", fontsize=7, zorder=7)
    if report.budget is not None and report.cost == "propagations":  # the budget bounds the plot's cost
        ax.axvline(report.budget, color="tab:blue", linestyle="--", label=f"budget {report.budget:g}")
    ax.set_xlabel(report.x_label())
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(f"{report.name}: accuracy against compute ({report.objective})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
