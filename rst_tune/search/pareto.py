"""The Pareto front of a search, read from its Optuna study: table, CSV, JSON, plot and hypervolume.

The front is over val_accuracy (higher is better) and propagations (lower is better) of the trials
that trained every epoch (COMPLETE, and within the budget when there is one), whatever the objective.
The hypervolume is the area the front dominates above the reference point (val_accuracy 0,
propagations of SAM at every step), divided by that reference's propagations.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import optuna

from rst_tune.search.record import TrialRow, trial_rows


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
    trials: list[TrialRow]
    front: list[TrialRow]
    reference_propagations: int | None
    hypervolume: float | None

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
            "reference_point": {"val_accuracy": 0.0, "propagations": self.reference_propagations},
            "hypervolume": self.hypervolume,
            "front": [r.to_json() for r in self.front],
            "trials": [r.to_json() for r in self.trials],
        }

    def table(self) -> str:
        lines = [f"{'trial':>5}  {'val_acc':>7}  {'cost':>5}  {'propagations':>12}  config"]
        for row in self.front:
            tag = f"  [{row.baseline}]" if row.baseline else ""
            lines.append(
                f"{row.number:>5}  {row.val_accuracy:>7.2%}  {row.cost_ratio:>5.3f}  "
                f"{row.propagations:>12d}  {row.label}{tag}"
            )
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts().items()))
        lines.append(f"{len(self.trials)} trials ({counts}); {len(self.front)} on the front")
        if self.hypervolume is not None:
            lines.append(
                f"hypervolume {self.hypervolume:.4f} (reference point: val_accuracy 0, propagations "
                f"{self.reference_propagations} = SAM at every step; area divided by those propagations)"
            )
        return "\n".join(lines)


def build_report(study: optuna.Study, objective: str, budget: float | None) -> ParetoReport:
    rows = trial_rows(study)
    done = [r for r in rows if r.state == "COMPLETE" and (budget is None or r.cost_ratio <= budget)]
    front = [done[i] for i in pareto_front([(r.val_accuracy, r.propagations) for r in done])]
    front.sort(key=lambda r: (r.propagations, -r.val_accuracy))
    reference = max((2 * r.metrics.steps for r in done), default=None)  # SAM at every step
    volume = (
        hypervolume([(r.val_accuracy, r.propagations) for r in front], (0.0, reference)) / reference
        if reference
        else None
    )
    return ParetoReport(study.study_name, objective, budget, rows, front, reference, volume)


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
            "label",
            "val_accuracy",
            "cost_ratio",
            "propagations",
            "expected_cost",
            "seed",
            "ray_trial_id",
            "baseline",
        ]
        writer.writerow(columns)
        for row in report.front:
            writer.writerow([getattr(row, c) for c in columns])
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    txt_path.write_text(report.table() + "\n")
    plot(report, png_path)
    plot_html(report, html_path)
    return [folder / name for name in report.files]


def plot_html(report: ParetoReport, path: Path) -> None:
    import plotly.graph_objects as go

    def points(rows: list[TrialRow], name: str, **style) -> go.Scatter:
        return go.Scatter(
            x=[r.cost_ratio for r in rows],
            y=[r.val_accuracy for r in rows],
            name=name,
            **style,
            text=[f"trial {r.number}: {r.label}" + (f" [{r.baseline}]" if r.baseline else "") for r in rows],
            hovertemplate="%{text}<br>cost %{x:.3f}, val_accuracy %{y:.2%}<extra></extra>",
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
        xaxis_title="cost ratio (SGD 1, SAM 2)",
        yaxis_title="validation accuracy",
        yaxis_tickformat=".1%",
    )
    fig.write_html(path, include_plotlyjs=True)


def plot(report: ParetoReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    complete, stopped = report.complete(), report.stopped_early()
    ax.scatter(
        [r.cost_ratio for r in complete],
        [r.val_accuracy for r in complete],
        s=22,
        color="0.6",
        label=f"trials ({len(complete)})",
        zorder=2,
    )
    if stopped:
        ax.scatter(
            [r.cost_ratio for r in stopped],
            [r.val_accuracy for r in stopped],
            s=22,
            facecolors="none",
            edgecolors="0.6",
            label=f"stopped early ({len(stopped)}, partial)",
            zorder=2,
        )
    ax.step(
        [r.cost_ratio for r in report.front],
        [r.val_accuracy for r in report.front],
        where="post",
        color="tab:red",
        zorder=3,
    )
    ax.scatter(
        [r.cost_ratio for r in report.front],
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
                [r.cost_ratio for r in rows],
                [r.val_accuracy for r in rows],
                s=90,
                marker=marker,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                label=f"{name} baseline",
                zorder=5,
            )
    if report.budget is not None:
        ax.axvline(report.budget, color="tab:blue", linestyle="--", label=f"budget {report.budget:g}")
    ax.set_xlabel("cost ratio (propagations per step; SGD 1, SAM 2)")
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(f"{report.name}: accuracy against compute ({report.objective})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
