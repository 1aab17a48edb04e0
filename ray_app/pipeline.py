"""Stages glued together: prepare data, train with Ray Train, evaluate on the holdout, bundle and register."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from ray_app.config import ExperimentConfig, RuntimePaths
from ray_app.data.preprocess import PreparedData, holdout_frame, prepare
from ray_app.data.sources import FeatureSpec, infer_spec, read_frame, resolve_files, source_files
from ray_app.data.validate import DataReport, Reference, Violation, validate_frame
from ray_app.gate import EXIT_PROMOTED, EXIT_REJECTED, GateReport, evaluate_gate, promote_if_better, score
from ray_app.metrics import baseline_metrics, classification_metrics, regression_metrics
from ray_app.monitor.profiles import profile_frame
from ray_app.package import FeatureSchema, ModelBundle
from ray_app.registry import ModelRef, ModelRegistry, git_sha
from ray_app.train.trainer import TrainOutcome, train

REFERENCE_ROWS = 20_000


@dataclass
class TrainingReport:
    """What `ray-app train` prints and returns."""

    model: ModelRef
    mlflow_run_id: str
    dataset_version: str
    holdout: dict[str, float]
    baseline: dict[str, float]
    train_metrics: dict


def holdout_metrics(bundle: ModelBundle, holdout: pd.DataFrame) -> dict[str, float]:
    """Score a bundle on raw holdout rows, through the same `predict` that serving uses."""
    scored = score(bundle, holdout)
    if bundle.target.classes is None:
        return regression_metrics(scored.y, scored.output)
    return classification_metrics(scored.y, scored.output)


def build_bundle(data: PreparedData, outcome: TrainOutcome) -> ModelBundle:
    """The ModelBundle of a finished run: weights, fitted preprocessor, schema, reference profile."""
    spec = data.spec
    categories = {col: sorted(map(str, data.raw["train"].unique(col))) for col in spec.categorical}
    sample = data.raw["train"].limit(REFERENCE_ROWS).to_pandas()[[*spec.features, spec.label]]
    if spec.task == "classification":  # the monitor compares served class predictions with these, as text
        sample[spec.label] = sample[spec.label].astype(str)
    return ModelBundle(
        mlp=outcome.mlp,
        state_dict=outcome.state_dict,
        preprocessor_state=data.preprocessor.serialize(),
        schema=FeatureSchema(label=spec.label, task=spec.task, numeric=spec.numeric, categorical=categories),
        target=data.target,
        dataset_version=data.version.model_dump(),
        reference_profile=profile_frame(sample),
    )


def run_params(cfg: ExperimentConfig) -> dict:
    """The hyperparameters logged on a run."""
    return {**{f"model.{k}": v for k, v in cfg.model.model_dump().items()},
            **{f"train.{k}": v for k, v in cfg.train.model_dump().items()},
            "data.source": cfg.data.source, "data.seed": cfg.data.seed}


def run_tags(cfg: ExperimentConfig, data: PreparedData, run_name: str) -> dict:
    """Lineage tags on a run: dataset version, code version, spec."""
    return {"dataset_version": data.version.id, "git_sha": git_sha(), "experiment_config": cfg.name,
            "task": data.spec.task, "ray_train_run": run_name}


def evaluate_and_register(cfg: ExperimentConfig, data: PreparedData, outcome: TrainOutcome,
                          registry: ModelRegistry, run_id: str) -> tuple[ModelRef, dict, dict]:
    """Bundle a trained model, score it and a trivial baseline on the holdout, log both, register the bundle."""
    bundle = build_bundle(data, outcome)
    holdout = data.raw["holdout"].to_pandas()
    scores = holdout_metrics(bundle, holdout)
    train_labels = data.raw["train"].select_columns([data.spec.label]).to_pandas()[data.spec.label]
    if data.spec.task == "regression":
        y_true, y_train = holdout[data.spec.label].to_numpy(), train_labels.to_numpy()
    else:
        y_true, y_train = data.target.encode(holdout[data.spec.label]), data.target.encode(train_labels)
    baseline = baseline_metrics(data.spec.task, y_train, y_true, data.target.num_outputs)
    bundle.metrics = {f"holdout_{k}": v for k, v in scores.items()}
    ref = registry.log_bundle(run_id, bundle, cfg.registry.model_name, holdout[data.spec.features].head(5))
    for key, value in {**bundle.metrics, **{f"baseline_{k}": v for k, v in baseline.items()}}.items():
        registry.client.log_metric(run_id, key, float(value))
    return ref, scores, baseline


def run_training(cfg: ExperimentConfig, paths: RuntimePaths, run_name: str | None = None) -> TrainingReport:
    """Data → Ray Train → holdout evaluation → MLflow run and a registered model version."""
    data = prepare(cfg.data, paths.data_dir)
    registry = ModelRegistry(paths.tracking_uri, paths.artifact_root)
    run_name = run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = registry.start_run(cfg.registry.experiment, run_name, run_params(cfg), run_tags(cfg, data, run_name))
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


def run_data_gate(cfg: ExperimentConfig, paths: RuntimePaths, source: str | None = None) -> DataReport:
    """Validate a dataset (default: the spec's own source) against the spec and the champion's reference."""
    files = resolve_files(source) if source else source_files(cfg.data, paths.data_dir)
    frame = read_frame(files)
    label = cfg.data.label or "label"
    if label not in frame:
        return DataReport(source or cfg.data.source, len(frame), [Violation(label, "missing column", "absent",
                                                                            "present (the label)")])
    spec = infer_spec(cfg.data, {col: str(dtype) for col, dtype in frame.dtypes.items()})
    bundle, _ = champion_bundle(ModelRegistry(paths.tracking_uri), cfg.registry.model_name)
    reference = None
    if bundle is not None:
        reference = Reference.from_profile(bundle.schema.numeric, bundle.schema.categorical, bundle.reference_profile)
        spec = FeatureSpec(label=bundle.schema.label, numeric=bundle.schema.numeric,
                           categorical=list(bundle.schema.categorical), task=bundle.schema.task)
    return validate_frame(frame, spec, cfg.gate.data, reference, source=source or cfg.data.source)


def run_gate(cfg: ExperimentConfig, paths: RuntimePaths, challenger_uri: str) -> tuple[GateReport, ModelRef]:
    """Evaluate a challenger against the champion on the spec's holdout."""
    registry = ModelRegistry(paths.tracking_uri)
    ref = registry.resolve(challenger_uri)
    if registry.alias_version(ref.name, "champion") == ref.version:
        raise ValueError(f"{ref.uri} is already the champion")
    challenger, ref = registry.load_bundle(ref.uri)
    champion, champion_ref = champion_bundle(registry, ref.name)
    holdout, holdout_version = holdout_frame(cfg.data, paths.data_dir)
    report = evaluate_gate(challenger, champion, holdout, cfg.gate,
                           (ref.uri, champion_ref.uri if champion_ref else None), holdout_version)
    return report, ref


def gate_and_promote(cfg: ExperimentConfig, paths: RuntimePaths, challenger_uri: str) -> tuple[GateReport, int]:
    """The model gate, then promotion or rejection with its audit record; returns the exit code."""
    report, ref = run_gate(cfg, paths, challenger_uri)
    registry = ModelRegistry(paths.tracking_uri)
    promoted = promote_if_better(registry, report, ref.name, ref.version, paths.audit_log, paths.actor)
    return report, EXIT_PROMOTED if promoted else EXIT_REJECTED


def run_pipeline(cfg: ExperimentConfig, paths: RuntimePaths, log=print, canary: bool = False) -> int:
    """validate → train → gate → promote, stopping at the first failed gate with its exit code. With `canary`,
    a challenger that passes the gate is not promoted here: a canary rollout (`cfg.rollout`) decides."""
    data_report = run_data_gate(cfg, paths)
    log(data_report.render())
    if not data_report.passed:
        return EXIT_REJECTED
    report = run_training(cfg, paths)
    ModelRegistry(paths.tracking_uri).set_alias(report.model.name, "challenger", report.model.version)
    log(f"trained {report.model.uri} (challenger): holdout {report.holdout}")
    if not canary:
        gate_report, code = gate_and_promote(cfg, paths, report.model.uri)
        log(gate_report.render())
        return code
    from ray_app.rollout import RolloutController

    gate_report, ref = run_gate(cfg, paths, report.model.uri)
    log(gate_report.render())
    if not gate_report.passed:
        promote_if_better(ModelRegistry(paths.tracking_uri), gate_report, ref.name, ref.version, paths.audit_log,
                          paths.actor)  # records the rejection
        return EXIT_REJECTED
    outcome = RolloutController(cfg, paths).run()
    log(f"canary rollout of {ref.uri}: {outcome.decision} ({outcome.reason})")
    return EXIT_PROMOTED if outcome.decision == "promoted" else EXIT_REJECTED
