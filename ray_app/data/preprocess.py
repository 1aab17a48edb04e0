"""Deterministic splits and the preprocessor that is fitted on train only and ships with the model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ray_app.config import DataConfig, UserError
from ray_app.data.sources import (
    DatasetVersion,
    FeatureSpec,
    fingerprint,
    infer_spec,
    read_dataset,
    read_frame,
    source_files,
)

SPLITS = ("train", "val", "holdout")
FEATURES_COLUMN = "features"
TARGET_COLUMN = "target"


def assign_splits(frame: pd.DataFrame, seed: int, val_fraction: float, holdout_fraction: float) -> np.ndarray:
    """Give each row a split from a seeded hash of its content.

    The assignment does not depend on row order or on how Ray Data cuts blocks, so the same data and
    seed always give the same split, and duplicated rows never straddle train and holdout.
    """
    hashed = pd.util.hash_pandas_object(frame, index=False, hash_key=f"{seed % 10**16:016d}").to_numpy()
    u = (hashed % np.uint64(1_000_003)).astype(np.float64) / 1_000_003
    return np.where(u < holdout_fraction, "holdout", np.where(u < holdout_fraction + val_fraction, "val", "train"))


def build_preprocessor(spec: FeatureSpec):
    """Scale numeric columns, one-hot encode categorical ones, and concatenate them into one float32 vector."""
    from ray.data.preprocessors import Chain, Concatenator, OneHotEncoder, StandardScaler

    steps = []
    if spec.numeric:
        steps.append(StandardScaler(columns=spec.numeric))
    if spec.categorical:
        steps.append(OneHotEncoder(columns=spec.categorical))
    steps.append(Concatenator(columns=spec.features, output_column_name=FEATURES_COLUMN, dtype=np.float32,
                              flatten=True))
    return Chain(*steps)


def load_preprocessor(state: bytes):
    """Restore a fitted preprocessor from the bytes that `Preprocessor.serialize()` gave."""
    from ray.data.preprocessors import Chain

    return Chain.deserialize(state)


@dataclass(frozen=True)
class TargetEncoding:
    """How the label becomes the training target: class indices, or a standardised number."""

    task: str
    classes: list[Any] | None = None
    mean: float = 0.0
    std: float = 1.0

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else 1

    def encode(self, labels: pd.Series) -> np.ndarray:
        if self.classes is None:
            return ((labels.to_numpy(dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        index = {value: i for i, value in enumerate(self.classes)}
        codes = labels.map(index)
        if codes.isna().any():
            unseen = sorted(set(labels[codes.isna()].astype(str)))[:5]
            raise UserError(f"labels not seen in training: {unseen}")
        return codes.to_numpy(dtype=np.int64)

    @classmethod
    def fit(cls, task: str, labels: pd.Series) -> TargetEncoding:
        if task == "classification":
            return cls(task=task, classes=sorted(pd.unique(labels).tolist()))
        std = float(labels.std()) or 1.0
        return cls(task=task, mean=float(labels.mean()), std=std)


def to_model_inputs(batch: pd.DataFrame, preprocessor, spec: FeatureSpec, target: TargetEncoding) -> pd.DataFrame:
    """Turn raw rows into the two columns the training loop reads: feature vector and target."""
    transformed = preprocessor.transform_batch(batch[spec.features].reset_index(drop=True))
    out = pd.DataFrame({FEATURES_COLUMN: list(np.stack(transformed[FEATURES_COLUMN].to_numpy()))})
    out[TARGET_COLUMN] = target.encode(batch[spec.label].reset_index(drop=True))
    return out


@dataclass
class PreparedData:
    """What the data stage hands to training: the split datasets, the fitted state, and the version."""

    spec: FeatureSpec
    version: DatasetVersion
    preprocessor: Any
    target: TargetEncoding
    raw: dict[str, Any]  # split name -> Ray Dataset of raw rows
    model_inputs: dict[str, Any]  # "train"/"val" -> Ray Dataset of (features, target)

    @property
    def num_features(self) -> int:
        sample = self.preprocessor.transform_batch(self.raw["train"].limit(1).to_pandas()[self.spec.features])
        return int(np.stack(sample[FEATURES_COLUMN].to_numpy()).shape[1])


def assign_folds(frame: pd.DataFrame, seed: int, folds: int) -> np.ndarray:
    """Give each row one of `folds` folds from a seeded hash of its content (independent of the split's hash)."""
    hashed = pd.util.hash_pandas_object(frame, index=False, hash_key=f"{(seed + 7919) % 10**16:016d}").to_numpy()
    return (hashed % np.uint64(folds)).astype(np.int64)


def _select_split(batch: pd.DataFrame, name: str, cfg: DataConfig, fold: tuple[int, int] | None) -> pd.DataFrame:
    splits = assign_splits(batch, cfg.seed, cfg.val_fraction, cfg.holdout_fraction)
    if fold is not None and name != "holdout":  # k-fold: train and val are the folds of train + val
        folds, index = fold
        in_fold = assign_folds(batch, cfg.seed, folds) == index
        keep = (splits != "holdout") & (in_fold if name == "val" else ~in_fold)
    else:
        keep = splits == name
    return batch.loc[keep].reset_index(drop=True)


def split_dataset(ds, cfg: DataConfig, fold: tuple[int, int] | None = None) -> dict[str, Any]:
    """Split a Ray Dataset of raw rows into train, val and holdout (or fold `i` of `k` for train and val)."""
    return {name: ds.map_batches(_select_split, fn_args=(name, cfg, fold), batch_format="pandas").materialize()
            for name in SPLITS}


def prepare(cfg: DataConfig, data_dir, fold: tuple[int, int] | None = None) -> PreparedData:
    """Read, fingerprint, split, fit the preprocessor on train only, and encode train and val.

    With `fold=(k, i)`, val is the i-th of k folds of the rows outside holdout and train is the rest.
    """
    files = source_files(cfg, data_dir)
    version = fingerprint(files)
    spec = infer_spec(cfg, version.columns)
    raw = split_dataset(read_dataset(files), cfg, fold)
    if raw["train"].count() == 0:
        raise UserError("the train split is empty: the dataset is too small for the configured fractions")
    preprocessor = build_preprocessor(spec).fit(raw["train"])
    target = TargetEncoding.fit(spec.task, raw["train"].select_columns([spec.label]).to_pandas()[spec.label])
    model_inputs = {
        name: raw[name].map_batches(to_model_inputs, fn_args=(preprocessor, spec, target), batch_format="pandas")
        .materialize()
        for name in ("train", "val")
    }
    return PreparedData(spec, version, preprocessor, target, raw, model_inputs)


def holdout_frame(cfg: DataConfig, data_dir) -> tuple[pd.DataFrame, str]:
    """The raw holdout rows of a data config, and a version id for exactly those rows (data + split)."""
    files = source_files(cfg, data_dir)
    version = fingerprint(files)
    frame = read_frame(files)
    keep = assign_splits(frame, cfg.seed, cfg.val_fraction, cfg.holdout_fraction) == "holdout"
    key = f"{version.id}:{cfg.seed}:{cfg.val_fraction}:{cfg.holdout_fraction}:holdout"
    return frame.loc[keep].reset_index(drop=True), hashlib.sha256(key.encode()).hexdigest()[:16]
