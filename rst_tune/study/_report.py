"""The result of a study, read from its Optuna study: one row per configuration over its seeds,
compared with SGD and SAM; written as Markdown, CSV, JSON and a plot with error bars."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import optuna

from rst_tune.search._pareto import state_counts
from rst_tune.search._record import TrialRow, trial_rows
from rst_tune.search._space import baseline_name
from rst_tune.study._spec import StudySpec, epochs_words
from rst_tune.study._stats import Comparison, Spread, paired, spread, welch

REFERENCES = ("SGD", "SAM")


@dataclass
class ConfigurationRow:
    configuration: str
    baseline: str | None
    seeds: int  # seeds that trained every epoch (COMPLETE)
    val_accuracy: Spread
    test_accuracy: Spread  # n = 0 when the data has no test part
    cost_ratio: Spread
    sam_fraction: Spread
    propagations: float  # mean over seeds
    expected_cost: float
    against: dict[str, Comparison]  # "SGD" / "SAM" -> difference of `measure` and Welch p-value (not itself)


@dataclass(frozen=True)
class PairedRow:
    """`a` − `b` in the measure, over the seeds both completed, with the paired interval."""

    a: str
    b: str
    seeds: int
    comparison: Comparison
    confidence: float


@dataclass
class StudyReport:
    files: ClassVar[tuple[str, ...]] = ("study.md", "study.csv", "study.json", "study.png")
    front: ClassVar[None] = None  # a study singles out no trials

    name: str
    seeds: int
    epochs: int | None  # every configuration's, or None where they differ
    measure: str  # what the comparisons compare: val_accuracy, or test_accuracy when there is no validation
    trials: list[TrialRow]
    rows: list[ConfigurationRow]
    paired: list[PairedRow]
    run_dir: Path | None = None  # the run folder, where `rst_tune.api` ran it

    def counts(self) -> dict[str, int]:
        return state_counts(self.trials)

    def summary_metrics(self) -> dict[str, float]:
        return {}

    def accuracies(self) -> list[str]:
        """The accuracy columns the table shows: val_accuracy where the data has a validation part,
        test_accuracy where it has a test part."""
        return [
            name
            for name in ("val_accuracy", "test_accuracy")
            if any(getattr(row, name).n and not math.isnan(getattr(row, name).mean) for row in self.rows)
        ]

    def table(self) -> str:
        """The Markdown table: accuracies in %, differences in percentage points."""
        shown = self.accuracies()
        head = [
            "configuration",
            "seeds",
            *(column for name in shown for column in (f"{name} (mean ± sd)", "95 % CI")),
            "cost ratio",
            "SAM fraction",
            "propagations",
            *(f"vs {ref}: Δ pp (p)" for ref in REFERENCES),
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for row in self.rows:
            spreads = [getattr(row, name) for name in shown]
            cells = [
                row.configuration + (f" **[{row.baseline}]**" if row.baseline else ""),
                f"{row.seeds}/{self.seeds}",
                *(
                    cell
                    for acc in spreads
                    for cell in (
                        f"{_pct(acc.mean)} ± {_pct(acc.sd)}",
                        f"{_pct(acc.ci_low)} – {_pct(acc.ci_high)}",
                    )
                ),
                _num(row.cost_ratio.mean, ".3f"),
                _num(row.sam_fraction.mean, ".3f"),
                _num(row.propagations, ".0f"),
                *(_versus(row, ref) for ref in REFERENCES),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts().items()))
        lines.append("")
        lines.append(
            f"{len(self.rows)} configurations × {self.seeds} seeds, {epochs_words(self.epochs)} ({counts}). "
            f"Δ: difference of mean {self.measure} in percentage points; p: Welch's two-sided t-test."
        )
        if self.paired:
            lines += ["", f"Paired by seed ({self.measure}, a − b in percentage points):", ""]
            lines += ["| a | b | seeds | Δ pp | interval | p |", "|---|---|---:|---:|---:|---:|"]
            for pair in self.paired:
                c = pair.comparison
                lines.append(
                    f"| {pair.a} | {pair.b} | {pair.seeds} | {_num(100 * c.difference, '+.2f')} | "
                    + (
                        "– (every seed's difference the same)"
                        if math.isnan(c.ci_low)
                        else f"{100 * c.ci_low:+.2f} – {100 * c.ci_high:+.2f} ({pair.confidence:.0%})"
                    )
                    + f" | {_num(c.p_value, '.2g')} |"
                )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "measure": self.measure,
            "counts": self.counts(),
            "configurations": [asdict(r) for r in self.rows],
            "paired": [asdict(p) for p in self.paired],
            "trials": [r.to_json() for r in self.trials],
        }


def _json_safe(value: Any) -> Any:
    """NaN (a missing figure) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2%}".replace("%", "")


def _num(value: float, spec: str) -> str:
    return "–" if math.isnan(value) else format(value, spec)


def _versus(row: ConfigurationRow, reference: str) -> str:
    comparison = row.against.get(reference)
    if comparison is None or math.isnan(comparison.difference):
        return "–"
    p = "p n/a" if math.isnan(comparison.p_value) else f"p={comparison.p_value:.2g}"
    return f"{100 * comparison.difference:+.2f} ({p})"


def build_study_report(study: optuna.Study, spec: StudySpec) -> StudyReport:
    trials = trial_rows(study)
    done = [t for t in trials if t.state == "COMPLETE"]
    labels = [spec.label(i) for i in range(len(spec.configurations))]
    configs = [spec.train_config_of(i) for i in range(len(labels))]
    baselines = [baseline_name(config) for config in configs]
    has_val = any(not math.isnan(t.val_accuracy) for t in done)
    measure = "val_accuracy" if has_val or not done else "test_accuracy"
    accuracies = {label: [getattr(t, measure) for t in done if t.configuration == label] for label in labels}
    references = {}
    for label, baseline in zip(labels, baselines):
        if baseline in REFERENCES and baseline not in references:
            references[baseline] = label
    rows = []
    for label, baseline, config in zip(labels, baselines, configs):
        mine = [t for t in done if t.configuration == label]
        rows.append(
            ConfigurationRow(
                configuration=label,
                baseline=baseline,
                seeds=len(mine),
                val_accuracy=spread([t.val_accuracy for t in mine]),
                test_accuracy=spread([t.test_accuracy for t in mine if t.test_accuracy is not None]),
                cost_ratio=spread([t.cost_ratio for t in mine]),
                sam_fraction=spread([t.metrics.sam_fraction for t in mine]),
                propagations=spread([t.propagations for t in mine]).mean,
                expected_cost=config.expected_cost(),
                against={
                    ref: welch(accuracies[label], accuracies[other])
                    for ref, other in references.items()
                    if other != label
                },
            )
        )
    paired_rows = []
    for a, b in spec.compare:
        by_seed = [
            {t.seed: getattr(t, measure) for t in done if t.configuration == label} for label in (a, b)
        ]
        common = sorted(set(by_seed[0]) & set(by_seed[1]))
        difference = paired([by_seed[0][s] for s in common], [by_seed[1][s] for s in common], spec.confidence)
        paired_rows.append(PairedRow(a, b, len(common), difference, spec.confidence))
    return StudyReport(spec.name, spec.seeds, spec.shared_epochs(), measure, trials, rows, paired_rows)


def write_study_report(report: StudyReport, folder: str | Path) -> list[Path]:
    """study.md (the table), study.csv (one row per configuration), study.json (every figure and
    trial) and study.png (accuracy against cost with 95 % intervals)."""
    folder = Path(folder)
    md_path, csv_path, json_path, png_path = (folder / name for name in report.files)
    md_path.write_text(f"# {report.name}\n\n{report.table()}\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        keys = [field.name for field in fields(Comparison)]
        writer.writerow(
            [
                "configuration",
                "baseline",
                "seeds",
                "val_accuracy_mean",
                "val_accuracy_sd",
                "ci95_low",
                "ci95_high",
                "test_accuracy_mean",
                "test_accuracy_sd",
                "test_ci95_low",
                "test_ci95_high",
                "cost_ratio_mean",
                "sam_fraction_mean",
                "propagations_mean",
                "expected_cost",
                *(f"{key}_vs_{ref}" for ref in REFERENCES for key in keys),
            ]
        )
        for row in report.rows:
            acc = row.val_accuracy
            comparisons = [row.against.get(ref) for ref in REFERENCES]
            writer.writerow(
                [
                    row.configuration,
                    row.baseline or "",
                    row.seeds,
                    acc.mean,
                    acc.sd,
                    acc.ci_low,
                    acc.ci_high,
                    row.test_accuracy.mean,
                    row.test_accuracy.sd,
                    row.test_accuracy.ci_low,
                    row.test_accuracy.ci_high,
                    row.cost_ratio.mean,
                    row.sam_fraction.mean,
                    row.propagations,
                    row.expected_cost,
                    *(getattr(c, key) if c else "" for c in comparisons for key in keys),
                ]
            )
    json_path.write_text(json.dumps(_json_safe(report.to_json()), indent=2))
    plot_study(report, png_path)
    return [folder / name for name in report.files]


def plot_study(report: StudyReport, path: Path) -> None:
    """Left: mean accuracy (the report's `measure`) against mean cost ratio. Right: every configuration
    side by side. Error bars are 95 % intervals; SGD and SAM are marked, their means drawn across both
    panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [row for row in report.rows if row.seeds > 0]
    styles = {"SGD": ("s", "black"), "SAM": ("D", "tab:red")}
    fig, (by_cost, by_name) = plt.subplots(
        1, 2, figsize=(12, 5.5), dpi=120, sharey=True, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    for x, row in enumerate(rows):
        acc = getattr(row, report.measure)
        marker, color = styles.get(row.baseline or "", ("o", "tab:blue"))
        error = [[acc.mean - acc.ci_low], [acc.ci_high - acc.mean]] if row.seeds > 1 else None
        label = f"{row.baseline} baseline" if row.baseline in styles else None
        by_cost.errorbar(
            row.cost_ratio.mean,
            acc.mean,
            yerr=error,
            fmt=marker,
            color=color,
            capsize=3,
            label=label,
            zorder=3,
        )
        by_name.errorbar(x, acc.mean, yerr=error, fmt=marker, color=color, capsize=3, zorder=3)
        if row.baseline in styles:
            for ax in (by_cost, by_name):
                ax.axhline(acc.mean, color=color, linestyle=":", linewidth=1, zorder=1)
    by_cost.set_xlabel("cost ratio (propagations per step; SGD 1, SAM 2)")
    by_cost.set_ylabel(f"{report.measure}: mean over seeds, 95 % CI")
    by_cost.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    by_name.set_xticks(
        range(len(rows)),
        [f"{r.configuration}\n(cost {r.cost_ratio.mean:.2f})" for r in rows],
        rotation=40,
        ha="right",
        fontsize=7,
    )
    for ax in (by_cost, by_name):
        ax.grid(alpha=0.3)
    if by_cost.get_legend_handles_labels()[0]:
        by_cost.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"{report.name}: {len(report.rows)} configurations × {report.seeds} seeds, "
        f"{epochs_words(report.epochs)}"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
