"""A finished training run made into a registered model: holdout scores (and a trivial baseline's), the
ModelBundle with its reference profile, the MLflow run's params and lineage tags, the registered version."""

from __future__ import annotations

import pandas as pd

from ray_app.config import ExperimentConfig
from ray_app.data.preprocess import PreparedData, category_text, fitted_categories
from ray_app.gate import score
from ray_app.metrics import baseline_metrics, classification_metrics, regression_metrics
from ray_app.package import FeatureSchema, ModelBundle
from ray_app.profiles import profile_frame
from ray_app.registry import ModelRef, ModelRegistry, git_sha
from ray_app.train.trainer import TrainOutcome

REFERENCE_ROWS = 20_000


def holdout_metrics(bundle: ModelBundle, holdout: pd.DataFrame) -> dict[str, float]:
    """Score a bundle on raw holdout rows, through the same `predict` that serving uses."""
    scored = score(bundle, holdout)
    if bundle.target.classes is None:
        return regression_metrics(scored.y, scored.output)
    return classification_metrics(scored.y, scored.output)


def build_bundle(data: PreparedData, outcome: TrainOutcome) -> ModelBundle:
    """The ModelBundle of a finished run: weights, fitted preprocessor, schema, reference profile."""
    spec = data.spec
    categories = fitted_categories(data.preprocessor, spec.categorical)
    sample = data.raw["train"].limit(REFERENCE_ROWS).to_pandas()[[*spec.features, spec.label]]
    for column in spec.categorical:  # as served: text (an integer code as "7"), a null kept a null
        sample[column] = sample[column].map(lambda v: None if pd.isna(v) else category_text(v))
    sample[spec.boolean] = sample[spec.boolean].astype(float)
    if spec.task == "classification":  # the monitor compares served class predictions with these, as text
        sample[spec.label] = sample[spec.label].astype(str)
    return ModelBundle(
        mlp=outcome.mlp,
        state_dict=outcome.state_dict,
        preprocessor_state=data.preprocessor.serialize(),
        schema=FeatureSchema(label=spec.label, task=spec.task, numeric=spec.numeric, categorical=categories,
                             nullable=spec.nullable, boolean=spec.boolean),
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
