"""What a registered version shows people in MLflow: plots of its holdout scores (ROC, precision-recall, confusion
matrix and calibration for classification; residuals for regression), its training curves, and a model card
(Markdown) that the registry version's description points to."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ray_app.metrics import PRIMARY_METRIC, classification_metrics, regression_metrics

PLOT_ROWS = 5000  # points drawn in a scatter; curves use every scored row
CI_RESAMPLES = 200
CI_ROWS = 5000


@dataclass(frozen=True)
class ModelFacts:
    """What the model card says of one version, gathered at registration."""

    name: str
    version: str
    run_id: str
    task: str
    label: str
    classes: list[str] | None
    dataset_version: str
    source: str
    git_sha: str
    params: dict
    holdout: dict[str, float]
    baseline: dict[str, float]
    holdout_rows: int
    interval: tuple[str, float, float]  # (metric, low, high): a 95% bootstrap interval on the holdout
    spec_artifact: str
    attributions: list[tuple[str, float, float]] = ()  # (feature, mean |attribution|, share), largest first


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(5, 4), dpi=100)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def classification_plots(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, bytes]:
    """ROC and precision-recall curves (one-vs-rest when there are more than two classes), the confusion matrix
    and a reliability diagram, as PNG files by name."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import auc, confusion_matrix, precision_recall_curve, roc_curve

    shown = [1] if proba.shape[1] == 2 else list(range(proba.shape[1]))
    plots = {}
    for name, curve, axes in (("roc.png", roc_curve, ("false positive rate", "true positive rate")),
                              ("pr.png", precision_recall_curve, ("recall", "precision"))):
        plt, fig, ax = _figure()
        for k in shown:
            if len(np.unique(y == k)) < 2:
                continue
            first, second, _ = curve(y == k, proba[:, k])
            x, v = (first, second) if curve is roc_curve else (second, first)
            ax.plot(x, v, label=f"{classes[k]} (area {auc(x, v):.3f})")
        ax.set(xlabel=axes[0], ylabel=axes[1], xlim=(0, 1), ylim=(0, 1.02))
        if ax.lines:  # a holdout of one class has no curve
            ax.legend(loc="lower right" if curve is roc_curve else "lower left", fontsize=8)
        plots[name] = _png(plt, fig)
    plt, fig, ax = _figure()
    matrix = confusion_matrix(y, proba.argmax(axis=1), labels=list(range(len(classes))))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true")
    plots["confusion.png"] = _png(plt, fig)
    plt, fig, ax = _figure()
    for k in shown:
        if len(np.unique(y == k)) < 2:
            continue
        observed, predicted = calibration_curve(y == k, proba[:, k], n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, marker="o", label=classes[k])
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    plots["calibration.png"] = _png(plt, fig)
    return plots


def regression_plots(y: np.ndarray, predicted: np.ndarray, seed: int = 0) -> dict[str, bytes]:
    """Residuals against predictions (a seeded sample of at most PLOT_ROWS points)."""
    rows = np.random.default_rng(seed).permutation(len(y))[:PLOT_ROWS]
    plt, fig, ax = _figure()
    ax.scatter(predicted[rows], y[rows] - predicted[rows], s=4, alpha=0.4)
    ax.axhline(0, color="grey", linestyle="--")
    ax.set(xlabel="predicted", ylabel="residual (true - predicted)")
    return {"residuals.png": _png(plt, fig)}


def training_curves(history: dict[str, list[tuple[int, float]]]) -> bytes:
    """Every per-epoch metric of the run (losses on the left axis, the rest on the right), by epoch."""
    plt, fig, ax = _figure()
    other = ax.twinx()
    for name, points in sorted(history.items()):
        steps, values = zip(*sorted(points), strict=True)
        (ax if "loss" in name else other).plot(np.array(steps) + 1, values, marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="loss")
    other.set(ylabel="metric")
    lines = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    return _png(plt, fig)


def attribution_chart(table, title: str) -> bytes:
    """A horizontal bar chart of `explain.global_attributions` (feature, mean_abs_attribution), largest on top."""
    plt, fig, ax = _figure()
    fig.set_size_inches(5, 0.35 * len(table) + 1.2)
    ordered = table.iloc[::-1]
    ax.barh(ordered["feature"], ordered["mean_abs_attribution"])
    ax.set(xlabel="mean |attribution| (Integrated Gradients)", title=title)
    return _png(plt, fig)


def bootstrap_interval(task: str, y: np.ndarray, output: np.ndarray, seed: int = 0) -> tuple[str, float, float]:
    """A 95% percentile-bootstrap interval of the task's primary metric (CI_RESAMPLES resamples of a seeded
    subsample of at most CI_ROWS rows)."""
    metric = PRIMARY_METRIC[task]
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(y))[:CI_ROWS]
    y, output = y[rows], output[rows]
    score = classification_metrics if task == "classification" else regression_metrics
    values = []
    for _ in range(CI_RESAMPLES):
        pick = rng.integers(0, len(y), len(y))
        value = score(y[pick], output[pick]).get(metric, float("nan"))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return metric, float("nan"), float("nan")
    return metric, float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def model_card(facts: ModelFacts, plots: list[str]) -> str:
    """The version's model card in Markdown: data and lineage, metrics with an interval, the baseline, how it
    was trained, its plots, and how to reproduce it."""
    metric, low, high = facts.interval

    def table(rows: dict[str, float]) -> list[str]:
        return ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in sorted(rows.items()))]

    classes = f" ({', '.join(facts.classes)})" if facts.classes else ""
    lines = [
        f"# {facts.name} version {facts.version}", "",
        f"- task: {facts.task}, label `{facts.label}`{classes}",
        f"- data: `{facts.source}`, DatasetVersion `{facts.dataset_version}`",
        f"- trained in MLflow run `{facts.run_id}` from commit `{facts.git_sha}`",
        f"- holdout: {facts.holdout_rows} rows scored; {metric} {facts.holdout.get(metric, float('nan')):.4f}, "
        f"95% bootstrap interval [{low:.4f}, {high:.4f}]", "",
        "## Holdout metrics", "", *table(facts.holdout), "",
        "## A trivial baseline on the same rows (the majority class, or the mean)", "", *table(facts.baseline), "",
        "## Training", "", "| parameter | value |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in sorted(facts.params.items())), "",
        "## Feature attributions", "",
        "Mean absolute Integrated Gradients of the predicted class's probability (or of the prediction) over "
        "holdout rows, from the all-zeros encoded baseline (training means, no category); one-hot columns and "
        "missing indicators summed into their feature (`attributions.csv`).", "",
        "| feature | mean abs attribution | share |", "|---|---|---|",
        *(f"| {feature} | {value:.4f} | {share:.3f} |" for feature, value, share in facts.attributions), "",
        "## Plots", "", *(f"![{name}](plots/{name})" for name in plots), "",
        "## Gates", "",
        "Once gated, `gate_report.md` beside this card holds the model gate's last report on this version "
        "(its figures beside the champion's, every check); every decision is in the audit log "
        "(`$RAY_APP_HOME/audit.jsonl`) and in the version's tags.", "",
        "## Reproduce", "",
        "```",
        f"git checkout {facts.git_sha}",
        f"mlflow artifacts download --run-id {facts.run_id} --artifact-path {facts.spec_artifact} --dst-path .",
        f"ray-app train --spec {facts.spec_artifact}",
        "```", "",
    ]
    return "\n".join(lines)
