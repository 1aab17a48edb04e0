"""k-fold cross-validation of one configuration: how much of the tuned metric is the split's luck."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ray_app.config import ExperimentConfig, RuntimePaths
from ray_app.data.preprocess import prepare
from ray_app.train.trainer import train


@dataclass(frozen=True)
class CrossValidation:
    """The metric on each fold's validation part, with its mean and spread."""

    metric: str
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def cross_validate(cfg: ExperimentConfig, paths: RuntimePaths, folds: int, metric: str,
                   run_name: str) -> CrossValidation:
    """Train `cfg` once per fold (preprocessor refitted on each fold's train part) and collect `metric`. Each fold
    reads the cached split lazily and holds nothing after its run."""
    values = []
    for index in range(folds):
        data = prepare(cfg.data, paths, fold=(folds, index))
        outcome = train(cfg, data, paths, f"{run_name}-cv{index}of{folds}")
        values.append(float(outcome.metrics[metric]))
        del data, outcome  # this fold's encoded inputs leave the object store before the next fold is prepared
    return CrossValidation(metric, values)
