"""A finished training run made into a registered model: holdout scores (and a trivial baseline's), the
ModelBundle with its reference profile, the MLflow run's params and lineage tags, the registered version."""

from __future__ import annotations

import yaml

from ray_app.config import ExperimentConfig
from ray_app.data.preprocess import PreparedData, fitted_categories
from ray_app.explain import GLOBAL_ROWS, global_attributions
from ray_app.metrics import baseline_metrics, classification_metrics, regression_metrics
from ray_app.package import FeatureSchema, ModelBundle
from ray_app.registry import ModelRef, ModelRegistry, git_sha
from ray_app.reports import (
    ModelFacts,
    attribution_chart,
    bootstrap_interval,
    classification_plots,
    model_card,
    regression_plots,
    training_curves,
)
from ray_app.scoring import Scored, score_dataset
from ray_app.train.trainer import TrainOutcome

CARD_ARTIFACT, SPEC_ARTIFACT, ATTRIBUTIONS_ARTIFACT = "model_card.md", "experiment.yaml", "attributions.csv"


def scored_metrics(bundle: ModelBundle, scored: Scored) -> dict[str, float]:
    """The task's metrics of a bundle's outputs on labelled rows."""
    if bundle.target.classes is None:
        return regression_metrics(scored.y, scored.output)
    return classification_metrics(scored.y, scored.output)


def build_bundle(data: PreparedData, outcome: TrainOutcome) -> ModelBundle:
    """The ModelBundle of a finished run: weights, fitted preprocessor, schema, and the reference profile (the
    whole train split, profiled block by block as served)."""
    spec = data.spec
    categories = fitted_categories(data.preprocessor, spec.categorical)
    return ModelBundle(
        mlp=outcome.mlp,
        state_dict=outcome.state_dict,
        preprocessor_state=data.preprocessor.serialize(),
        schema=FeatureSchema(label=spec.label, task=spec.task, numeric=spec.numeric, categorical=categories,
                             nullable=spec.nullable, boolean=spec.boolean),
        target=data.target,
        dataset_version=data.version.model_dump(),
        reference_profile=data.train_profile,
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
    """Bundle a trained model, score it on the holdout (in the cluster; at most `data.eval_rows` rows of it) and a
    trivial baseline, log both, register the bundle."""
    bundle = build_bundle(data, outcome)
    scored = score_dataset([bundle], data.cache.subsample("holdout", cfg.data.eval_rows))[0]
    scores = scored_metrics(bundle, scored)
    guess = data.target.constant_guess(data.summary.label_counts, data.summary.label_mean)
    baseline = baseline_metrics(data.spec.task, guess, scored.y, data.target.num_outputs)
    bundle.metrics = {f"holdout_{k}": v for k, v in scores.items()}
    examples = data.raw("holdout").limit(5).to_pandas()[data.spec.features]
    ref = registry.log_bundle(run_id, bundle, cfg.registry.model_name, examples)
    logged = {**bundle.metrics, **{f"baseline_{k}": v for k, v in baseline.items()}, "holdout_rows_scored": len(scored)}
    for key, value in logged.items():
        registry.client.log_metric(run_id, key, float(value))
    log_version_report(cfg, data, bundle, ref, scored, scores, baseline, registry)
    return ref, scores, baseline


def log_version_report(cfg: ExperimentConfig, data: PreparedData, bundle: ModelBundle, ref: ModelRef,
                       scored: Scored, scores: dict, baseline: dict, registry: ModelRegistry) -> None:
    """The version's plots (holdout scores, training curves), its spec and its model card on its run; the
    registry version's description points to the card."""
    classes = [str(c) for c in bundle.target.classes] if bundle.target.classes is not None else None
    plots = (classification_plots(scored.y, scored.output, classes) if classes is not None
             else regression_plots(scored.y, scored.output))
    history = registry.epoch_history(ref.run_id)
    if history:
        plots["training_curves.png"] = training_curves(history)
    rows = data.raw("holdout").limit(GLOBAL_ROWS).to_pandas()[data.spec.features]
    attributions = global_attributions(bundle, rows)
    plots["attributions.png"] = attribution_chart(attributions, f"{ref.name} version {ref.version}")
    facts = ModelFacts(name=ref.name, version=ref.version, run_id=ref.run_id, task=data.spec.task,
                       label=data.spec.label, classes=classes,
                       dataset_version=data.version.id, source=cfg.data.source, git_sha=git_sha(),
                       params=run_params(cfg), holdout=scores, baseline=baseline, holdout_rows=len(scored),
                       interval=bootstrap_interval(data.spec.task, scored.y, scored.output, cfg.data.seed),
                       spec_artifact=SPEC_ARTIFACT,
                       attributions=list(attributions.itertuples(index=False, name=None)))
    files = {f"plots/{name}": png for name, png in plots.items()}
    files[ATTRIBUTIONS_ARTIFACT] = attributions.to_csv(index=False)
    files[SPEC_ARTIFACT] = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    files[CARD_ARTIFACT] = model_card(facts, sorted(plots))
    registry.log_files(ref.run_id, files)
    registry.client.update_model_version(ref.name, ref.version, description=(
        f"Model card: runs:/{ref.run_id}/{CARD_ARTIFACT} (plots under plots/, the spec in {SPEC_ARTIFACT})"))
