"""Deterministic splits and the preprocessor that is fitted on train only and ships with the model."""

from __future__ import annotations

import hashlib
import logging
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
    read_column,
    read_dataset,
    read_frame,
    source_files,
)

logger = logging.getLogger(__name__)
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


MISSING = "__missing__"


def indicator(column: str) -> str:
    """The 0/1 feature beside a nullable numeric column: 1 where the value was missing."""
    return f"{column}__missing"


def category_text(value: object) -> str:
    """A category as text, the same whether it came as 3, 3.0 (an integer column with nulls) or "3"."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return MISSING
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    return str(value)


def as_numbers(values: pd.Series) -> pd.Series:
    """A numeric feature as float64 (booleans as 0/1, anything missing as NaN), index from 0."""
    values = values.reset_index(drop=True)
    return pd.to_numeric(values.astype("object") if values.dtype == "boolean" else values,
                         errors="coerce").astype(np.float64)


def normalize_rows(batch: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Raw rows as the fitted preprocessor reads them, in training and serving alike: numbers (booleans as 0/1)
    as float64 with NaN for missing, categories as text (missing: `__missing__`), and a 0/1 missing indicator
    beside every numeric feature that had nulls in training."""
    out = pd.DataFrame(index=range(len(batch)))
    for column in spec.numeric:
        out[column] = as_numbers(batch[column])
    for column in spec.nullable:
        if column in spec.numeric:
            out[indicator(column)] = out[column].isna().astype(np.float64)
    for column in spec.categorical:
        out[column] = [category_text(v) for v in batch[column].tolist()]
    return out


def model_columns(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """The preprocessor's numeric inputs (features, then missing indicators) and categorical inputs."""
    return [*spec.numeric, *(indicator(c) for c in spec.nullable if c in spec.numeric)], list(spec.categorical)


def build_preprocessor(spec: FeatureSpec, medians: dict[str, float] | None = None, max_categories: int = 50):
    """Impute numeric columns with the train split's median, scale them, one-hot encode categorical ones (their
    `max_categories` most frequent values), and concatenate everything into one float32 vector."""
    from ray.data.preprocessors import Chain, Concatenator, OneHotEncoder, SimpleImputer, StandardScaler

    numeric, categorical = model_columns(spec)
    steps = [SimpleImputer(columns=[column], strategy="constant", fill_value=float(median))
             for column, median in (medians or {}).items()]
    if numeric:
        steps.append(StandardScaler(columns=numeric))
    if categorical:
        steps.append(OneHotEncoder(columns=categorical, max_categories={c: max_categories for c in categorical}))
    steps.append(Concatenator(columns=[*numeric, *categorical], output_column_name=FEATURES_COLUMN,
                              dtype=np.float32, flatten=True))
    return Chain(*steps)


def fitted_categories(preprocessor, columns: list[str]) -> dict[str, list[str]]:
    """The categories the fitted one-hot encoder kept per column (its most frequent, `__missing__` aside)."""
    stats: dict = {}
    for step in getattr(preprocessor, "_preprocessors", [preprocessor]):
        stats.update(getattr(step, "stats_", None) or {})
    return {c: sorted(str(v) for v in stats.get(f"unique_values({c})", {}) if v != MISSING) for c in columns}


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
    def fit(cls, task: str, labels: pd.Series, name: str = "label") -> TargetEncoding:
        if task == "classification":
            values = pd.unique(labels.dropna()).tolist()
            if len(values) < 2:
                raise UserError(f"label {name!r} has {len(values)} class(es) "
                                f"({', '.join(map(str, values[:1])) or 'no values'}): a classifier needs two or more; "
                                "check data.label, or set data.task: regression for a number")
            try:
                return cls(task=task, classes=sorted(values))
            except TypeError:  # mixed types (e.g. 1 and "1"): order them as text
                return cls(task=task, classes=sorted(values, key=str))
        std = float(labels.std()) or 1.0
        return cls(task=task, mean=float(labels.mean()), std=std)


def encode_rows(preprocessor, spec, rows: pd.DataFrame) -> np.ndarray:
    """Raw feature rows to the float32 matrix the network reads: normalised, then the fitted preprocessor.
    `spec` is a FeatureSpec or a model's FeatureSchema (numeric, categorical, nullable)."""
    transformed = preprocessor.transform_batch(normalize_rows(rows, spec))
    return np.stack(transformed[FEATURES_COLUMN].to_numpy()).astype(np.float32, copy=False)


def to_model_inputs(batch: pd.DataFrame, preprocessor, spec: FeatureSpec, target: TargetEncoding) -> pd.DataFrame:
    """Turn raw rows into the two columns the training loop reads: feature vector and target."""
    out = pd.DataFrame({FEATURES_COLUMN: list(encode_rows(preprocessor, spec, batch))})
    out[TARGET_COLUMN] = target.encode(batch[spec.label].reset_index(drop=True))
    return out


def _numbers_only(batch: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    out = batch[spec.categorical].reset_index(drop=True)
    for column in spec.numeric:
        out[column] = as_numbers(batch[column])
    return out


def summarize_train(train, spec: FeatureSpec) -> tuple[FeatureSpec, dict[str, float]]:
    """One pass over the train split: which features are constant (dropped, with a warning) and which have nulls
    (`nullable`), and each numeric feature's median (its imputed value)."""
    from ray.data.aggregate import CountDistinct, Max, Min, MissingValuePercentage, Quantile

    aggregates = [MissingValuePercentage(on=c, alias_name=f"null({c})") for c in spec.features]
    for c in spec.numeric:
        aggregates += [Quantile(on=c, q=0.5, alias_name=f"median({c})"), Min(c, alias_name=f"min({c})"),
                       Max(c, alias_name=f"max({c})")]
    aggregates += [CountDistinct(on=c, alias_name=f"distinct({c})") for c in spec.categorical]
    stats = train.map_batches(_numbers_only, fn_args=(spec,), batch_format="pandas").aggregate(*aggregates)
    nullable = [c for c in spec.features if (stats[f"null({c})"] or 0) > 0]
    constant = [c for c in spec.numeric if stats[f"min({c})"] is None or stats[f"min({c})"] == stats[f"max({c})"]
                and c not in nullable]
    constant += [c for c in spec.categorical if (stats[f"distinct({c})"] or 0) <= 1 and c not in nullable]
    for column in constant:
        logger.warning("warning: feature %r is constant in the train split: dropped", column)
    keep = [c for c in spec.features if c not in constant]
    if not keep:
        raise UserError("every feature is constant in the train split: there is nothing to learn from")
    spec = spec.model_copy(update={"numeric": [c for c in spec.numeric if c in keep],
                                   "categorical": [c for c in spec.categorical if c in keep],
                                   "boolean": [c for c in spec.boolean if c in keep],
                                   "nullable": [c for c in nullable if c in keep]})
    medians = {c: _median(stats[f"median({c})"]) for c in spec.numeric}
    return spec, medians


def _median(value) -> float:
    value = value[0] if isinstance(value, list) else value
    return 0.0 if value is None or not np.isfinite(value) else float(value)


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
        return int(encode_rows(self.preprocessor, self.spec, self.raw["train"].limit(1).to_pandas()).shape[1])


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
    if cfg.label in batch:  # rows without a label teach nothing and score nothing
        keep &= batch[cfg.label].notna().to_numpy()
    return batch.loc[keep].reset_index(drop=True)


def split_dataset(ds, cfg: DataConfig, fold: tuple[int, int] | None = None) -> dict[str, Any]:
    """Split a Ray Dataset of raw rows into train, val and holdout (or fold `i` of `k` for train and val)."""
    return {name: ds.map_batches(_select_split, fn_args=(name, cfg, fold), batch_format="pandas").materialize()
            for name in SPLITS}


MIN_ROWS = 20  # below this the three splits cannot all have rows


def preflight(cfg: DataConfig, data_dir) -> tuple[DatasetVersion, FeatureSpec]:
    """What can be checked of a data source before Ray starts: the files exist and read, the label and the
    features make sense, there are rows enough to split. Each problem is one UserError naming the fix."""
    version = fingerprint(source_files(cfg, data_dir))
    spec = infer_spec(cfg, version.columns)
    if version.num_rows < MIN_ROWS:
        raise UserError(f"{cfg.source}: {version.num_rows} row(s) is too few to split into train, val and holdout "
                        f"(at least {MIN_ROWS}; the data gate's gate.data.min_rows sets the real floor)")
    if spec.task == "classification":  # one column read: cheap, and an hour of training saved
        TargetEncoding.fit(spec.task, read_column(version.files, spec.label), spec.label)
    return version, spec


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
    spec, medians = summarize_train(raw["train"], spec)
    preprocessor = build_preprocessor(spec, medians, cfg.max_categories)
    preprocessor = preprocessor.fit(raw["train"].map_batches(normalize_rows, fn_args=(spec,), batch_format="pandas"))
    target = TargetEncoding.fit(spec.task, raw["train"].select_columns([spec.label]).to_pandas()[spec.label],
                                spec.label)
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
    if cfg.label in frame:
        keep &= frame[cfg.label].notna().to_numpy()
    key = f"{version.id}:{cfg.seed}:{cfg.val_fraction}:{cfg.holdout_fraction}:holdout"
    return frame.loc[keep].reset_index(drop=True), hashlib.sha256(key.encode()).hexdigest()[:16]
