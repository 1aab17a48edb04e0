"""Ray Tune over Ray Train: Optuna TPE (or random/grid) with ASHA; each trial is a TorchTrainer run."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from ray_app.config import Distribution, ExperimentConfig, RuntimePaths, TuneConfig, UserError
from ray_app.data.preprocess import PreparedData, prepare
from ray_app.evaluate import evaluate_and_register, run_params, run_tags
from ray_app.metrics import HIGHER_IS_BETTER, PRIMARY_METRIC
from ray_app.registry import ModelRef, ModelRegistry
from ray_app.resources import DATA_CPUS
from ray_app.train.trainer import build_trainer, loop_settings, outcome_from_checkpoint
from ray_app.tune.cv import CrossValidation, cross_validate


@dataclass
class TuningReport:
    """The search's outcome: the best trial's config and metric, and the challenger it registered."""

    model: ModelRef
    mlflow_run_id: str
    best_params: dict
    best_metric: float
    metric: str
    trials: int
    trial_epochs: int
    cv: CrossValidation | None = None


def objective(cfg: ExperimentConfig, task: str) -> tuple[str, str]:
    """The metric Tune optimises and its mode; defaults to the validation split's primary metric."""
    primary = PRIMARY_METRIC[task]
    metric = cfg.tune.metric or f"val_{primary}"
    mode = cfg.tune.mode or ("max" if HIGHER_IS_BETTER.get(metric.removeprefix("val_"), False) else "min")
    return metric, mode


def tune_space(space: dict[str, Distribution]) -> dict:
    """The spec's distributions as Ray Tune search-space objects."""
    from ray import tune

    def convert(dist: Distribution):
        if dist.type == "loguniform":
            return tune.loguniform(dist.low, dist.high)
        if dist.type == "uniform":
            return tune.uniform(dist.low, dist.high)
        if dist.type == "randint":
            return tune.randint(int(dist.low), int(dist.high) + 1)
        return tune.choice(dist.values)

    return {name: convert(dist) for name, dist in space.items()}


def apply_params(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """The experiment config with one trial's sampled values (`model.width`, `train.lr`, ...) in place."""
    sections: dict[str, dict] = {}
    for key, value in params.items():
        section, field = key.split(".", 1)
        annotation = type(cfg).model_fields[section].annotation.model_fields[field].annotation
        sections.setdefault(section, {})[field] = int(round(value)) if annotation is int else value
    return cfg.with_overrides(**sections)


def max_concurrent_trials(cfg: ExperimentConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once: each needs its own CPUs plus its workers' (and their GPUs), and one CPU stays
    free for the Ray Data tasks that stream every trial's splits."""
    per_trial = cfg.tune.trial_cpus + cfg.train.num_workers * cfg.train.cpus_per_worker
    fits = math.floor((resources.get("CPU", 0) - DATA_CPUS) / per_trial + 1e-9)
    if cfg.train.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0) / cfg.train.num_workers + 1e-9))
    if fits < 1:
        raise UserError(f"one trial needs {per_trial:g} CPUs (tune.trial_cpus + train.num_workers x "
                         f"train.cpus_per_worker) and Ray Data {DATA_CPUS:g}, but the cluster has "
                         f"{resources.get('CPU', 0):g}")
    return min(fits, cfg.tune.max_concurrent or fits)


def tune_trial(params: dict, cfg: ExperimentConfig, data: PreparedData, paths: RuntimePaths, parent_run_id: str):
    """One trial: a TorchTrainer run whose rank 0 metrics reach Tune each epoch, logged as a nested MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_cfg = apply_params(cfg, params)
    name = tune.get_context().get_trial_name()
    registry = ModelRegistry.from_paths(paths)  # in the trial's own process
    run_id = registry.start_run(cfg.registry.experiment, name, {**run_params(trial_cfg), **params},
                                {**run_tags(trial_cfg, data, name), "mlflow.parentRunId": parent_run_id})
    settings = loop_settings(trial_cfg, data, paths.tracking_uri, run_id)
    status = "FAILED"
    try:
        result = build_trainer(trial_cfg, data, paths, f"{name}-train", settings, [TuneReportCallback()]).fit()
        if result.error is not None:
            raise result.error
        status = "FINISHED"
    finally:
        registry.finish_run(run_id, status=status)


def build_tuner(cfg: ExperimentConfig, data: PreparedData, paths: RuntimePaths, name: str, parent_run_id: str,
                resume: bool):
    """A Tuner, new or restored from `<storage>/<name>`, that never runs more trials than the cluster fits."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    # How stale a resume may be: a trial that finished after the last save of the search state runs again.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(cfg.tune.state_save_period_s)
    metric, mode = objective(cfg, data.spec.task)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, cfg=cfg, data=data, paths=paths, parent_run_id=parent_run_id),
        {"CPU": cfg.tune.trial_cpus},
    )
    path = f"{paths.storage_path}/{name}"
    if resume:
        if not tune.Tuner.can_restore(path):
            raise FileNotFoundError(f"no tuning run to resume at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    concurrent = max_concurrent_trials(cfg, ray.cluster_resources())
    tune_cfg: TuneConfig = cfg.tune
    space = tune_space(tune_cfg.space)
    if tune_cfg.algorithm == "optuna":
        # The space lives in the searcher, not in the Tuner's param_space: Tuner.restore rebuilds the searcher from
        # the copy pickled at the start and fills it from the saved search state, and a searcher that Tune gave
        # its space later was seen (once, in CI) restored without it ("no search space has been defined").
        optuna = OptunaSearch(OptunaSearch.convert_search_space(space), metric=metric, mode=mode,
                              seed=tune_cfg.seed)
        search, space = ConcurrencyLimiter(optuna, max_concurrent=concurrent), {}
    else:
        search = BasicVariantGenerator(max_concurrent=concurrent, random_state=tune_cfg.seed)
    if tune_cfg.algorithm == "grid":
        space = {key: tune.grid_search(dist.values) for key, dist in tune_cfg.space.items()}
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                               grace_period=tune_cfg.grace_period, reduction_factor=tune_cfg.reduction_factor)
                 if tune_cfg.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=search, scheduler=scheduler,
                                    num_samples=tune_cfg.num_samples, time_budget_s=tune_cfg.time_budget_s,
                                    max_concurrent_trials=concurrent),
        # Quiet console: the trials' epoch lines say how the search goes, Tune's status tables stay out of it
        run_config=tune.RunConfig(name=name, storage_path=paths.storage_path,
                                  verbose=0 if paths.log_file is not None else None),
    )


def run_tuning(cfg: ExperimentConfig, paths: RuntimePaths, name: str | None = None, resume: bool = False,
               registry: ModelRegistry | None = None) -> TuningReport:
    """Search, then register the best trial's model as a new version with alias `challenger`."""
    if not cfg.tune.space:
        raise UserError("the spec has no tune.space to search")
    data = prepare(cfg.data, paths)
    for split in ("train", "val"):  # a small set is encoded once here, not once per trial
        data.model_inputs(split)
    registry = registry or ModelRegistry.from_paths(paths)
    name = name or f"tune-{cfg.name}"
    parent = _parent_run(registry, cfg, data, name, resume)
    results = build_tuner(cfg, data, paths, name, parent, resume).fit()
    metric, mode = objective(cfg, data.spec.task)
    best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    if best is None or best.metrics is None or "checkpoint_path" not in best.metrics:
        raise RuntimeError(f"no trial of {name!r} reported {metric} with a checkpoint")
    from ray.train import Checkpoint

    best_cfg = apply_params(cfg, best.config)
    settings = loop_settings(best_cfg, data)
    outcome = outcome_from_checkpoint(Checkpoint(best.metrics["checkpoint_path"]), settings.mlp, best.metrics,
                                      name)
    for key, value in best.config.items():
        registry.client.log_param(parent, f"best.{key}", value)
    ref, _, _ = evaluate_and_register(best_cfg, data, outcome, registry, parent)
    registry.set_alias(ref.name, "challenger", ref.version)
    trial_epochs = sum(int(r.metrics.get("training_iteration", 0)) for r in results if r.metrics)
    registry.client.log_metric(parent, "trial_epochs", trial_epochs)
    cv = cross_validate(best_cfg, paths, cfg.tune.cv, metric, name) if cfg.tune.cv else None
    summary = {f"best_{metric}": best.metrics[metric]}
    if cv is not None:
        summary.update({f"cv_mean_{metric}": cv.mean, f"cv_std_{metric}": cv.std})
    registry.finish_run(parent, summary)
    return TuningReport(ref, parent, best.config, float(best.metrics[metric]), metric, len(results), trial_epochs,
                        cv)


def _parent_run(registry: ModelRegistry, cfg: ExperimentConfig, data: PreparedData, name: str, resume: bool) -> str:
    """The tuning run that trials nest under; a resumed search reuses it."""
    if resume:
        found = registry.client.search_runs([registry.experiment_id(cfg.registry.experiment)],
                                            f"tags.tune_run = '{name}'", max_results=1,
                                            order_by=["attributes.start_time DESC"])
        if found:
            registry.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    tags = {**run_tags(cfg, data, name), "tune_run": name, "tune_algorithm": cfg.tune.algorithm,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    params = {**run_params(cfg), "tune.algorithm": cfg.tune.algorithm, "tune.scheduler": cfg.tune.scheduler,
              "tune.num_samples": cfg.tune.num_samples, "tune.space": str(sorted(cfg.tune.space))}
    return registry.start_run(cfg.registry.experiment, name, params, tags)

