"""Canary rollout: step the challenger's weight, analyse each step in Prometheus, then promote or roll back.

At each step the controller sets the weights, lets the metrics settle, takes a snapshot of the router's
per-variant counters in Prometheus, waits, takes another, and judges the difference: requests, errors, latency
buckets and labelled feedback that arrived while the step's weights were in force. Counters are differenced
here rather than with `increase()` over a range so a step counts exactly its own traffic, even for series that
first appear during the step.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from ray_app.config import ExperimentConfig, RolloutThresholds, RuntimePaths
from ray_app.incidents import record_step
from ray_app.registry import ModelRegistry
from ray_app.serve.weights import ModelSwapper, WeightSetter, model_swapper, weight_setter

logger = logging.getLogger(__name__)


class Prometheus:
    """Instant queries against Prometheus's HTTP API."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error', response.text[:200])}")
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]


@dataclass
class Counts:
    """One variant's counters: a snapshot, or the difference of two."""

    requests: float = 0.0
    errors: float = 0.0
    correct: float = 0.0
    wrong: float = 0.0
    abs_error_sum: float = 0.0
    abs_error_count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def minus(self, earlier: Counts) -> Counts:
        def diff(now: float, then: float) -> float:
            return now - then if now >= then else now  # a lower value means the counter restarted

        return Counts(*(diff(getattr(self, f), getattr(earlier, f)) for f in
                        ("requests", "errors", "correct", "wrong", "abs_error_sum", "abs_error_count")),
                      buckets={le: diff(n, earlier.buckets.get(le, 0.0)) for le, n in self.buckets.items()})

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def labels(self) -> float:
        return self.correct + self.wrong + self.abs_error_count

    @property
    def online(self) -> float | None:
        """Accuracy of labelled answers (classification) or their mean absolute error (regression)."""
        if self.correct + self.wrong:
            return self.correct / (self.correct + self.wrong)
        return self.abs_error_sum / self.abs_error_count if self.abs_error_count else None

    def quantile(self, q: float) -> float | None:
        """Like PromQL's `histogram_quantile`: linear within the bucket that holds the q-th observation."""
        bounds = sorted(self.buckets)
        if not bounds or self.buckets[bounds[-1]] <= 0:
            return None
        rank, lower, below = q * self.buckets[bounds[-1]], 0.0, 0.0
        for le in bounds:
            count = self.buckets[le]
            if count >= rank:
                if le == float("inf"):
                    return lower
                return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
            lower, below = le, count
        return lower


def snapshot(prometheus: Prometheus, experiment: str) -> dict[str, Counts]:
    """The router's counters per variant, summed over replicas."""
    sel = f'experiment="{experiment}"'
    counts: dict[str, Counts] = {}

    def query(promql: str):
        for labels, value in prometheus.query(promql):
            yield counts.setdefault(labels.get("variant", ""), Counts()), labels, value

    totals = {"requests": "ray_ab_requests_total", "errors": "ray_ab_errors_total",
              "abs_error_sum": "ray_ab_feedback_abs_error_sum", "abs_error_count": "ray_ab_feedback_abs_error_count"}
    for name, metric in totals.items():
        for variant, _, value in query(f"sum by (variant) ({metric}{{{sel}}})"):
            setattr(variant, name, value)
    for variant, labels, value in query(f"sum by (variant, outcome) (ray_ab_feedback_total{{{sel}}})"):
        if labels.get("outcome") in ("correct", "wrong"):
            setattr(variant, labels["outcome"], value)
    for variant, labels, value in query(f"sum by (variant, le) (ray_ab_latency_ms_bucket{{{sel}}})"):
        variant.buckets[float(labels["le"])] = value
    return counts


def judge(champion: Counts, challenger: Counts, t: RolloutThresholds) -> list[str]:
    """Every reason the challenger fails this step; empty when it passes. Too little traffic is not a failure
    here: the controller extends the step first."""
    reasons = []
    if challenger.error_rate > t.max_error_rate:
        reasons.append(f"challenger error rate {challenger.error_rate:.3f} > {t.max_error_rate}")
    if champion.requests >= t.min_requests and challenger.error_rate > champion.error_rate + t.max_error_rate_increase:
        reasons.append(f"challenger error rate {challenger.error_rate:.3f} > champion's "
                       f"{champion.error_rate:.3f} + {t.max_error_rate_increase}")
    p99_challenger, p99_champion = challenger.quantile(0.99), champion.quantile(0.99)
    if (p99_challenger is not None and p99_champion is not None
            and min(challenger.requests, champion.requests) >= t.min_latency_requests):
        limit = p99_champion * t.max_p99_ratio + t.p99_slack_ms
        if p99_challenger > limit:
            reasons.append(f"challenger p99 {p99_challenger:.1f} ms > {limit:.1f} ms "
                           f"(champion {p99_champion:.1f} x {t.max_p99_ratio} + {t.p99_slack_ms})")
    if min(challenger.labels, champion.labels) >= t.min_labels:
        mine, theirs = challenger.online, champion.online
        if challenger.correct + challenger.wrong and mine < theirs - t.max_accuracy_drop:
            reasons.append(f"challenger online accuracy {mine:.3f} < champion's {theirs:.3f} - {t.max_accuracy_drop}")
        elif challenger.abs_error_count and mine > theirs * (1 + t.max_abs_error_increase):
            reasons.append(f"challenger online MAE {mine:.3f} > champion's {theirs:.3f} x "
                           f"(1 + {t.max_abs_error_increase})")
    return reasons


@dataclass
class StepResult:
    percent: float
    champion: Counts
    challenger: Counts
    reasons: list[str]

    def summary(self) -> dict:
        def side(c: Counts) -> dict:
            p99 = c.quantile(0.99)
            return {"requests": c.requests, "error_rate": round(c.error_rate, 4),
                    "p99_ms": None if p99 is None else round(p99, 1), "labels": c.labels,
                    "online": None if c.online is None else round(c.online, 4)}

        return {"percent": self.percent, "champion": side(self.champion), "challenger": side(self.challenger),
                "reasons": self.reasons}


@dataclass
class RolloutOutcome:
    decision: Literal["promoted", "rolled_back"]
    reason: str
    steps: list[dict]
    version: str


class RolloutController:
    """Runs `cfg.rollout` against a live router: weights through `set_weights`, metrics from Prometheus.

    Where the target can also say which model a variant serves (Serve's REST API, a RayService), the challenger
    variant is first switched to the version under test (at 0% of the traffic), and a promotion ends with the
    champion variant (at 0% by then) serving it and taking the traffic back: the A/B app's `champion` always
    serves the `champion` alias. Through the admin route only weights move, and each variant serves what it
    loaded when it was deployed."""

    def __init__(self, cfg: ExperimentConfig, paths: RuntimePaths, set_weights: WeightSetter | None = None,
                 prometheus: Prometheus | None = None, sleep: Callable[[float], None] = time.sleep,
                 registry: ModelRegistry | None = None, incident: str | None = None,
                 serve_model: ModelSwapper | None = None):
        spec = cfg.rollout
        self.spec, self.model_name, self.paths, self.sleep = spec, cfg.registry.model_name, paths, sleep
        self.prometheus = prometheus or Prometheus(spec.prometheus_url or paths.prometheus_url)
        self.set_weights = set_weights or weight_setter(spec, paths)
        self.serve_model = serve_model or (None if set_weights else model_swapper(self.set_weights))
        self.registry = registry or ModelRegistry.from_paths(paths)
        self.incident = incident
        self.state_file = paths.home / "rollouts" / f"{spec.experiment}.json"

    def weights(self, percent: float) -> dict[str, float]:
        return {self.spec.champion: 100 - percent, self.spec.challenger: percent}

    def challenger_version(self) -> str:
        uri = self.spec.challenger_uri or f"models:/{self.model_name}@challenger"
        return self.registry.resolve(uri).version

    def version_uri(self, version: str) -> str:
        return f"models:/{self.model_name}/{version}"

    def run(self) -> RolloutOutcome:
        version = self.challenger_version()
        self._write_state({"status": "running", "version": version, "steps": []})
        if self.serve_model is not None:
            self.set_weights(self.weights(0))
            self.serve_model(self.spec.challenger, self.version_uri(version))
        history: list[dict] = []
        for percent in self.spec.steps:
            logger.info("rollout %s: challenger at %s%%", self.spec.experiment, percent)
            self.set_weights(self.weights(percent))
            result = self._analyse(percent)
            history.append(result.summary())
            record_step(self.paths.audit_log, self.incident, "rollout-step", model=self.model_name, version=version,
                        experiment=self.spec.experiment, **history[-1])
            if self._ended_elsewhere():  # `ray-app rollout --promote/--abort` decided while this step ran
                return RolloutOutcome(self._read_state()["status"], "ended by a manual command", history, version)
            self._write_state({"status": "running", "version": version, "steps": history})
            if result.reasons:
                return self.abort("; ".join(result.reasons), history, version)
        return self.promote("every step passed", history, version)

    def _analyse(self, percent: float) -> StepResult:
        spec, t = self.spec, self.spec.thresholds
        self.sleep(spec.settle_s)
        before = snapshot(self.prometheus, spec.experiment)
        for _ in range(spec.max_extensions + 1):
            self.sleep(spec.step_wait_s)
            after = snapshot(self.prometheus, spec.experiment)
            champion = after.get(spec.champion, Counts()).minus(before.get(spec.champion, Counts()))
            challenger = after.get(spec.challenger, Counts()).minus(before.get(spec.challenger, Counts()))
            reasons = judge(champion, challenger, t)
            if reasons or challenger.requests >= t.min_requests:
                return StepResult(percent, champion, challenger, reasons)
        return StepResult(percent, champion, challenger,
                          [f"not enough traffic: {challenger.requests:.0f} challenger requests < {t.min_requests}"])

    def promote(self, reason: str, history: list[dict] | None = None, version: str | None = None) -> RolloutOutcome:
        """Challenger takes all traffic and the `champion` alias; audited. Then, where variants can be told their
        model, the champion variant serves it and takes the traffic back."""
        version = version or self.challenger_version()
        self.set_weights(self.weights(100))
        outcome = self._finish("promoted", reason, history or [], version)
        if self.serve_model is not None:
            self.serve_model(self.spec.champion, self.version_uri(version))
            self.set_weights(self.weights(0))
        return outcome

    def abort(self, reason: str, history: list[dict] | None = None, version: str | None = None) -> RolloutOutcome:
        """Champion takes all traffic back; the challenger keeps its alias; audited with the reason."""
        version = version or self.challenger_version()
        self.set_weights(self.weights(0))
        return self._finish("rolled_back", reason, history or [], version)

    def _finish(self, decision, reason: str, history: list[dict], version: str) -> RolloutOutcome:
        action = "rollout-promote" if decision == "promoted" else "rollout-rollback"
        self.registry.record_decision(action, self.model_name, version, reason, experiment=self.spec.experiment,
                                      steps=history, **({"incident": self.incident} if self.incident else {}))
        self._write_state({"status": decision, "version": version, "reason": reason, "steps": history})
        logger.info("rollout %s: %s (%s)", self.spec.experiment, decision, reason)
        return RolloutOutcome(decision, reason, history, version)

    def _read_state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _write_state(self, state: dict) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({**state, "updated": time.time()}, indent=1))

    def _ended_elsewhere(self) -> bool:
        return self._read_state().get("status") in ("promoted", "rolled_back")
