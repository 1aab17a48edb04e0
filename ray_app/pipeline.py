"""Orchestration only: data gate → train → evaluate and register → model gate → promote (or a canary rollout).

Every function takes the registry it works on (`ModelRegistry.from_paths`, built once by the caller); without
one it builds its own from `paths`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray_app.config import ExitCode, ExperimentConfig, RuntimePaths, UserError
from ray_app.data.preprocess import holdout_version, prepare, split_data
from ray_app.data.sources import (
    FINGERPRINT_CACHE,
    FeatureSpec,
    fingerprint,
    infer_spec,
    read_dataset,
    resolve_files,
    source_files,
)
from ray_app.data.validate import DataReport, Reference, Violation, validate_dataset
from ray_app.evaluate import evaluate_and_register, run_params, run_tags
from ray_app.gate import GateReport, HoldoutEvidence, evaluate_gate, promote_if_better
from ray_app.incidents import record_step
from ray_app.package import ModelBundle
from ray_app.registry import ModelRef, ModelRegistry
from ray_app.scoring import score_dataset
from ray_app.train.trainer import train


@dataclass
class TrainingReport:
    """What `ray-app train` prints and returns."""

    model: ModelRef
    mlflow_run_id: str
    dataset_version: str
    holdout: dict[str, float]
    baseline: dict[str, float]
    train_metrics: dict


def run_training(cfg: ExperimentConfig, paths: RuntimePaths, run_name: str | None = None,
                 registry: ModelRegistry | None = None, incident: str | None = None) -> TrainingReport:
    """Data → Ray Train → holdout evaluation → MLflow run and a registered model version."""
    registry = registry or ModelRegistry.from_paths(paths)
    data = prepare(cfg.data, paths)
    run_name = run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {**run_tags(cfg, data, run_name), **({"incident": incident} if incident else {})}
    run_id = registry.start_run(cfg.registry.experiment, run_name, run_params(cfg), tags)
    try:
        outcome = train(cfg, data, paths, run_name, paths.tracking_uri, run_id)
        ref, scores, baseline = evaluate_and_register(cfg, data, outcome, registry, run_id)
        registry.finish_run(run_id)
    except BaseException:
        registry.finish_run(run_id, status="FAILED")
        raise
    return TrainingReport(ref, run_id, data.version.id, scores, baseline, outcome.metrics)


def champion_bundle(registry: ModelRegistry, model_name: str) -> tuple[ModelBundle | None, ModelRef | None]:
    """The current champion, or (None, None) before the first promotion."""
    if registry.alias_version(model_name, "champion") is None:
        return None, None
    return registry.load_bundle(f"models:/{model_name}@champion")


def run_data_gate(cfg: ExperimentConfig, paths: RuntimePaths, source: str | None = None,
                  registry: ModelRegistry | None = None) -> DataReport:
    """Validate a dataset (default: the spec's own source) against the spec and the champion's reference, block by
    block in Ray Data."""
    registry = registry or ModelRegistry.from_paths(paths)
    files = resolve_files(source) if source else source_files(cfg.data, paths.data_dir)
    version = fingerprint(files, paths.data_dir / FINGERPRINT_CACHE)
    label = cfg.data.label or "label"
    if label not in version.columns:
        return DataReport(source or cfg.data.source, version.num_rows,
                          [Violation(label, "missing column", "absent", "present (the label)")])
    spec = infer_spec(cfg.data, version.columns)
    bundle, _ = champion_bundle(registry, cfg.registry.model_name)
    reference = None
    if bundle is not None:
        reference = Reference.from_profile(bundle.schema.numeric, bundle.schema.categorical, bundle.reference_profile)
        spec = FeatureSpec(label=bundle.schema.label, numeric=bundle.schema.numeric,
                           categorical=list(bundle.schema.categorical), task=bundle.schema.task)
    return validate_dataset(read_dataset(files), version.columns, spec, cfg.gate.data, reference,
                            source=source or cfg.data.source)


def run_gate(cfg: ExperimentConfig, paths: RuntimePaths, challenger_uri: str,
             registry: ModelRegistry | None = None) -> tuple[GateReport, ModelRef]:
    """Evaluate a challenger against the champion on the spec's holdout: the training holdout's own partitions,
    scored in the cluster."""
    registry = registry or ModelRegistry.from_paths(paths)
    ref = registry.resolve(challenger_uri)
    if registry.alias_version(ref.name, "champion") == ref.version:
        raise UserError(f"{ref.uri} is already the champion")
    challenger, ref = registry.load_bundle(ref.uri)
    champion, champion_ref = champion_bundle(registry, ref.name)
    cache, _ = split_data(cfg.data, paths)
    scored = score_dataset([b for b in (challenger, champion) if b is not None], cache.read("holdout"))
    evidence = HoldoutEvidence(holdout_version(cache.version, cfg.data), scored[0],
                               scored[1] if champion is not None else None,
                               cache.sample("holdout", cfg.gate.sample_rows))
    report = evaluate_gate(challenger, champion, evidence, cfg.gate,
                           (ref.uri, champion_ref.uri if champion_ref else None))
    return report, ref


def gate_and_promote(cfg: ExperimentConfig, paths: RuntimePaths, challenger_uri: str,
                     registry: ModelRegistry | None = None, incident: str | None = None) -> tuple[GateReport, ExitCode]:
    """The model gate, then promotion or rejection with its audit record; returns the exit code."""
    registry = registry or ModelRegistry.from_paths(paths)
    report, ref = run_gate(cfg, paths, challenger_uri, registry)
    promoted = promote_if_better(registry, report, ref.name, ref.version, incident=incident)
    return report, ExitCode.OK if promoted else ExitCode.REJECTED


def run_pipeline(cfg: ExperimentConfig, paths: RuntimePaths, log=print, canary: bool = False,
                 registry: ModelRegistry | None = None, incident: str | None = None) -> ExitCode:
    """validate → train → gate → promote, stopping at the first failed gate with its exit code. With `canary`,
    a challenger that passes the gate is not promoted here: a canary rollout (`cfg.rollout`) decides. With an
    `incident` (the retrain webhook's), every step is appended to the audit log under it."""
    registry = registry or ModelRegistry.from_paths(paths)

    def step(action: str, **details) -> None:
        if incident:
            record_step(paths.audit_log, incident, action, model=cfg.registry.model_name, **details)

    step("job-start", spec=cfg.name, canary=canary)
    data_report = run_data_gate(cfg, paths, registry=registry)
    log(data_report.render())
    step("data-gate" if data_report.passed else "data-gate-failed", rows=data_report.rows,
         violations=[f"{v.column}: {v.rule} {v.observed}, expected {v.expected}"
                     for v in data_report.violations[:20]])
    if not data_report.passed:
        return ExitCode.REJECTED
    report = run_training(cfg, paths, registry=registry, incident=incident)
    registry.set_alias(report.model.name, "challenger", report.model.version)
    shown = {name: round(value, 4) for name, value in report.holdout.items()}
    log(f"trained {report.model.uri} (challenger): holdout {shown}")
    step("trained", version=report.model.version, dataset_version=report.dataset_version,
         mlflow_run_id=report.mlflow_run_id, holdout=report.holdout)
    if not canary:
        gate_report, code = gate_and_promote(cfg, paths, report.model.uri, registry, incident)
        log(gate_report.render())
        return code
    from ray_app.rollout import RolloutController

    gate_report, ref = run_gate(cfg, paths, report.model.uri, registry)
    log(gate_report.render())
    if not gate_report.passed:
        registry.record_decision("reject", ref.name, ref.version, gate_report.reason, incident=incident,
                                 **gate_report.audit_details())
        return ExitCode.REJECTED
    step("gate", version=ref.version, passed=True, reason=gate_report.reason)
    outcome = RolloutController(cfg, paths, registry=registry, incident=incident).run()
    log(f"canary rollout of {ref.uri}: {outcome.decision} ({outcome.reason})")
    return ExitCode.OK if outcome.decision == "promoted" else ExitCode.REJECTED
