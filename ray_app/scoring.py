"""Bundles scored over a split with Ray Data: the rows stay in the cluster, only labels and outputs come back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ray_app.package import ModelBundle

SCORE_BATCH_ROWS = 8192


@dataclass
class Scored:
    """A bundle's outputs on labelled rows, in the form its metrics read: encoded labels, and class probabilities
    (classification) or predictions in the label's units (regression)."""

    y: np.ndarray
    output: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def score_frame(bundle: ModelBundle, frame: pd.DataFrame) -> Scored:
    """Score labelled rows held in memory, through the same `predict` that serving uses."""
    labels = frame[bundle.schema.label]
    result = bundle.predict(frame)
    if bundle.target.classes is None:
        return Scored(labels.to_numpy(dtype=np.float64), np.asarray(result["predictions"], dtype=np.float64))
    return Scored(bundle.target.encode(labels), np.asarray(result["probabilities"]))


class _PairedScorer:
    """A Ray Data callable class: each actor loads the bundles once and scores every batch with all of them."""

    def __init__(self, bundles: list[ModelBundle]):
        self.bundles = bundles

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for i, bundle in enumerate(self.bundles):
            scored = score_frame(bundle, batch)
            out[f"y{i}"] = scored.y
            output = scored.output.reshape(len(batch), -1)
            for k in range(output.shape[1]):
                out[f"out{i}_{k}"] = output[:, k]
        return pd.DataFrame(out)


def score_dataset(bundles: list[ModelBundle], ds, max_actors: int = 2) -> list[Scored]:
    """Score the same rows of a Ray Dataset with each bundle (paired: one row order for all), on an actor pool."""
    from ray.data import ActorPoolStrategy

    scored = ds.map_batches(_PairedScorer, fn_constructor_args=(bundles,), batch_format="pandas",
                            batch_size=SCORE_BATCH_ROWS, compute=ActorPoolStrategy(min_size=1, max_size=max_actors))
    columns: dict[str, list[np.ndarray]] = {}
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):  # arrays only: no frame per batch
        for name, values in batch.items():
            columns.setdefault(name, []).append(values)
    results = []
    for i, bundle in enumerate(bundles):
        width = bundle.target.num_outputs if bundle.target.classes is not None else 1
        if not columns:
            results.append(Scored(np.zeros(0), np.zeros((0, width)) if width > 1 else np.zeros(0)))
            continue
        y = np.concatenate(columns.pop(f"y{i}"))
        output = np.column_stack([np.concatenate(columns.pop(f"out{i}_{k}")) for k in range(width)])
        results.append(Scored(y, output if bundle.target.classes is not None else output[:, 0]))
    return results
