"""The model gate: challenger against champion on one holdout, beyond noise, within latency, size and behaviour."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ray_app.config import GateConfig
from ray_app.explain import global_attributions
from ray_app.metrics import HIGHER_IS_BETTER, PRIMARY_METRIC, metric_label, metric_value
from ray_app.package import EXPORT_FILES, ModelBundle, export_model, parity_error
from ray_app.registry import ModelRegistry
from ray_app.scoring import Scored, score_frame

GATE_REPORT_ARTIFACT = "gate_report.md"  # on the challenger's run: the last gate's report on that version


@dataclass(frozen=True)
class Check:
    """One gate rule and how the challenger fared."""

    name: str
    passed: bool
    observed: str
    threshold: str


@dataclass
class GateReport:
    """Every check, the figures behind them, and the decision."""

    challenger: str
    champion: str | None
    holdout_version: str
    metric: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    attributions: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> feature -> share

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def reason(self) -> str:
        failed = [f"{c.name}: {c.observed} (needs {c.threshold})" for c in self.checks if not c.passed]
        if failed:
            return "; ".join(failed)
        return f"better than {self.champion} beyond noise" if self.champion else "meets every floor (no champion)"

    def audit_details(self) -> dict:
        """What a decision on this report records besides the verdict and reason."""
        return {"holdout_version": self.holdout_version, "metric": self.metric, "figures": self.figures,
                "checks": [{"name": c.name, "passed": c.passed, "observed": c.observed} for c in self.checks]}

    def render(self) -> str:
        verdict = "PROMOTE" if self.passed else "REJECT"
        lines = [f"model gate: {self.challenger} vs {self.champion or '(no champion)'} on holdout "
                 f"{self.holdout_version}: {verdict}"]
        width = max((len(c.name) for c in self.checks), default=10)
        lines += [f"  {'ok ' if c.passed else 'NO '} {c.name.ljust(width)}  {c.observed:<36} {c.threshold}"
                  for c in self.checks]
        lines.append(f"  reason: {self.reason}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The report as the challenger's run keeps it: the decision, both models' holdout figures side by side,
        every check, and both models' attribution shares."""
        verdict = "PROMOTE" if self.passed else "REJECT"
        metrics = sorted({key.split("_", 1)[1] for key in self.figures if key.startswith(("challenger_", "champion_"))})

        def shown(key: str) -> str:
            return f"{self.figures[key]:.4f}" if key in self.figures else "-"

        lines = [f"# Model gate: {verdict}", "",
                 f"{self.challenger} against {self.champion or 'no champion'} on holdout `{self.holdout_version}` "
                 f"({int(self.figures.get('holdout_rows', 0))} rows): {self.reason}.", "",
                 "| holdout | challenger | champion |", "|---|---|---|",
                 *(f"| {m} | {shown(f'challenger_{m}')} | {shown(f'champion_{m}')} |" for m in metrics), "",
                 "| check | result | observed | needs |", "|---|---|---|---|",
                 *(f"| {c.name} | {'ok' if c.passed else 'NO'} | {c.observed} | {c.threshold} |" for c in self.checks)]
        if self.attributions:
            mine, theirs = self.attributions.get("challenger", {}), self.attributions.get("champion", {})
            features = sorted({*mine, *theirs}, key=lambda f: -mine.get(f, theirs.get(f, 0.0)))
            lines += ["", "Share of mean |attribution| (Integrated Gradients) on the gate's sample rows:", "",
                      "| feature | challenger | champion |", "|---|---|---|",
                      *(f"| {f} | {_share(mine, f)} | {_share(theirs, f)} |" for f in features)]
        return "\n".join(lines) + "\n"


def _share(shares: dict[str, float], feature: str) -> str:
    return f"{shares[feature]:.3f}" if feature in shares else "-"


def paired_bootstrap(metric: str, a: Scored, b: Scored, samples: int, seed: int = 0,
                     max_rows: int | None = None) -> np.ndarray:
    """Differences metric(a) - metric(b) over resamples of the same rows (paired: one index set for both). With
    `max_rows`, the resamples draw from a seeded subsample of that many rows (the CI widens accordingly)."""
    rng = np.random.default_rng(seed)
    n = len(a.y)
    rows = np.arange(n) if max_rows is None or n <= max_rows else np.sort(rng.choice(n, max_rows, replace=False))
    diffs = []
    for _ in range(samples):
        idx = rows[rng.integers(0, len(rows), len(rows))]
        diffs.append(metric_value(metric, a.y[idx], a.output[idx]) - metric_value(metric, b.y[idx], b.output[idx]))
    diffs = np.asarray(diffs)
    return diffs[np.isfinite(diffs)]


def latency_p99_ms(bundle: ModelBundle, frame: pd.DataFrame, calls: int = 200) -> float:
    """p99 of single-row `predict` calls, preprocessing included, in milliseconds."""
    rows = [frame.iloc[[i % len(frame)]] for i in range(calls)]
    bundle.predict(rows[0])
    timings = []
    for row in rows:
        start = time.perf_counter()
        bundle.predict(row)
        timings.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(timings, 99))


def _score_of_interest(bundle: ModelBundle, result: dict) -> np.ndarray:
    """The number a behaviour rule watches: the prediction (regression) or the last class's probability."""
    if bundle.target.classes is None:
        return np.asarray(result["predictions"], dtype=np.float64)
    return np.asarray(result["probabilities"])[:, -1]


def _perturb(bundle: ModelBundle, frame: pd.DataFrame, feature: str, shift: float) -> pd.DataFrame:
    changed = frame.copy()
    if feature in bundle.schema.categorical:
        values = bundle.schema.categorical[feature]
        following = {v: values[(i + 1) % len(values)] for i, v in enumerate(values)}
        changed[feature] = changed[feature].map(lambda v: following.get(v, v))
    else:
        changed[feature] = changed[feature] + shift * float(frame[feature].std() or 1.0)
    return changed


def _bound_check(name: str, metric: str, value: float, limit: float, observed: str) -> Check:
    """`value` must be at least `limit` for a higher-is-better metric, at most `limit` otherwise."""
    higher = HIGHER_IS_BETTER[metric]
    return Check(name, value >= limit if higher else value <= limit, observed, f"{'>=' if higher else '<='} {limit}")


def behaviour_checks(bundle: ModelBundle, frame: pd.DataFrame, cfg: GateConfig) -> list[Check]:
    """Invariance, monotonic direction and per-slice floors declared in the spec."""
    checks = []
    base_result = bundle.predict(frame)
    base = _score_of_interest(bundle, base_result)
    for rule in cfg.invariance:
        moved_result = bundle.predict(_perturb(bundle, frame, rule.feature, rule.shift))
        if bundle.target.classes is None:
            moved = _score_of_interest(bundle, moved_result)
            changed = np.abs(moved - base) > 0.25 * (np.std(base) or 1.0)
        else:
            changed = np.asarray(moved_result["predictions"]) != np.asarray(base_result["predictions"])
        checks.append(Check(f"invariance {rule.feature}", float(changed.mean()) <= rule.max_changed,
                            f"{changed.mean():.3f} of predictions changed", f"<= {rule.max_changed}"))
    for rule in cfg.monotonic:
        moved = _score_of_interest(bundle, bundle.predict(_perturb(bundle, frame, rule.feature, rule.delta)))
        wrong = (moved < base - 1e-6) if rule.direction == "increasing" else (moved > base + 1e-6)
        checks.append(Check(f"monotonic {rule.feature}", float(wrong.mean()) <= rule.tolerance,
                            f"{wrong.mean():.3f} of rows move against {rule.direction}", f"<= {rule.tolerance}"))
    for rule in cfg.slices:
        rows = frame[frame[rule.feature].astype(str) == str(rule.value)]
        if rows.empty:
            checks.append(Check(f"slice {rule.feature}={rule.value}", False, "no rows in holdout", "some rows"))
            continue
        scored = score_frame(bundle, rows)
        value = metric_value(rule.metric, scored.y, scored.output)
        checks.append(_bound_check(f"slice {rule.feature}={rule.value} {rule.metric}", rule.metric, value, rule.min,
                                   f"{value:.4f} on {len(rows)} rows"))
    return checks


@dataclass
class HoldoutEvidence:
    """What the gate judges on: both bundles' outputs on every holdout row (scored in the cluster), and a fixed
    seeded sample of raw holdout rows for latency, export parity and behaviour."""

    version: str
    challenger: Scored
    champion: Scored | None
    sample: pd.DataFrame


def evaluate_gate(challenger: ModelBundle, champion: ModelBundle | None, holdout: HoldoutEvidence, cfg: GateConfig,
                  names: tuple[str, str | None]) -> GateReport:
    """Run every check of the model gate; the report decides, `promote_if_better` acts on it."""
    metric = cfg.metric or PRIMARY_METRIC[challenger.schema.task]
    higher = HIGHER_IS_BETTER[metric]
    report = GateReport(names[0], names[1], holdout.version, metric)
    scored = holdout.challenger
    value = metric_value(metric, scored.y, scored.output)
    report.figures.update({f"challenger_{metric}": value, "holdout_rows": len(scored),
                           "sample_rows": len(holdout.sample)})

    classes = challenger.target.num_outputs if challenger.target.classes is not None else 0
    for name, floor in cfg.floors.items():
        got = metric_value(name, scored.y, scored.output)
        report.figures[f"challenger_{name}"] = got
        report.checks.append(_bound_check(f"floor {metric_label(name, classes)}", name, got, floor, f"{got:.4f}"))
    if champion is not None and holdout.champion is not None:
        base = holdout.champion
        for name in {metric, *cfg.floors}:
            report.figures[f"champion_{name}"] = metric_value(name, base.y, base.output)
        diffs = paired_bootstrap(metric, scored, base, cfg.bootstrap_samples, max_rows=cfg.bootstrap_rows)
        gains = diffs if higher else -diffs
        low, high = np.quantile(gains, [cfg.alpha / 2, 1 - cfg.alpha / 2])
        drawn = min(len(scored), cfg.bootstrap_rows)
        report.figures.update(gain_mean=float(gains.mean()), gain_ci_low=float(low), gain_ci_high=float(high),
                              bootstrap_rows=drawn)
        report.checks.append(Check(
            f"better than champion ({metric_label(metric, classes)})", bool(low > cfg.min_improvement),
            f"gain {gains.mean():+.4f}, {100 * (1 - cfg.alpha):.0f}% CI [{low:+.4f}, {high:+.4f}] on {drawn} rows",
            f"CI above {cfg.min_improvement:+.4f}"))

    sample = holdout.sample
    p99 = latency_p99_ms(challenger, sample)
    size_mb = challenger.size_bytes() / 1e6
    report.figures.update(latency_p99_ms=p99, size_mb=size_mb)
    report.checks.append(Check("latency p99 (1 row)", p99 <= cfg.max_latency_p99_ms, f"{p99:.2f} ms",
                               f"<= {cfg.max_latency_p99_ms} ms"))
    report.checks.append(Check("model size", size_mb <= cfg.max_size_mb, f"{size_mb:.3f} MB",
                               f"<= {cfg.max_size_mb} MB"))
    with tempfile.TemporaryDirectory() as folder:
        for fmt in EXPORT_FILES:
            error = parity_error(challenger, export_model(challenger, f"{folder}/{fmt}", fmt), fmt, sample)
            report.figures[f"parity_{fmt}"] = error
            report.checks.append(Check(f"export parity {fmt}", error <= cfg.parity_tolerance, f"max |diff| {error:.2e}",
                                       f"<= {cfg.parity_tolerance:.0e}"))
    report.checks += behaviour_checks(challenger, sample, cfg)
    for role, bundle in (("challenger", challenger), ("champion", champion)):
        if bundle is not None:
            table = global_attributions(bundle, sample[bundle.schema.features])
            report.attributions[role] = dict(zip(table["feature"], table["share"], strict=True))
    return report


def promote_if_better(registry: ModelRegistry, report: GateReport, name: str, version: str,
                      incident: str | None = None) -> bool:
    """Act on a gate report: promote when it passed, reject otherwise; `record_decision` audits either way."""
    registry.record_decision("promote" if report.passed else "reject", name, version, report.reason,
                             **({"incident": incident} if incident else {}), **report.audit_details())
    registry.log_files(registry.client.get_model_version(name, version).run_id,
                       {GATE_REPORT_ARTIFACT: report.markdown()})
    return report.passed
