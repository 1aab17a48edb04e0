"""The data stage: the split cache read lazily, one profile of the train split, and the preprocessor that is fitted
on train only and ships with the model."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_app.config import DataConfig, RuntimePaths, UserError
from ray_app.data.sources import (
    FINGERPRINT_CACHE,
    DatasetVersion,
    FeatureSpec,
    fingerprint,
    infer_spec,
    label_values,
    source_files,
)
from ray_app.data.splits import SplitCache
from ray_app.profiles import ProfileReader, profile_dataset

logger = logging.getLogger(__name__)
FEATURES_COLUMN = "features"
TARGET_COLUMN = "target"


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


def categories_as_text(values: pd.Series, missing: str | None = MISSING) -> pd.Series:
    """A categorical column as `category_text` gives it, with `missing` for a null; text columns in bulk (the
    per-value path costs about a second per million values)."""
    values = values.reset_index(drop=True)
    present = values.notna()
    if pd.api.types.is_string_dtype(values) and (values.dtype != object or pd.api.types.infer_dtype(
            values[present], skipna=False) in ("string", "empty")):
        return values.astype(object).where(present, missing)
    return pd.Series([missing if pd.isna(v) else category_text(v) for v in values.tolist()], dtype=object)


def as_numbers(values: pd.Series) -> pd.Series:
    """A numeric feature as float64 (booleans as 0/1, anything missing as NaN), index from 0."""
    values = values.reset_index(drop=True)
    if isinstance(values.dtype, pd.ArrowDtype) and _arrow_number(values.dtype.pyarrow_dtype):
        return pd.Series(values.to_numpy(dtype=np.float64, na_value=np.nan), copy=False)  # Ray Data's batches
    return pd.to_numeric(values.astype("object") if values.dtype == "boolean" else values,
                         errors="coerce").astype(np.float64)


def _arrow_number(dtype) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(dtype) or pa.types.is_integer(dtype) or pa.types.is_boolean(dtype)


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
        out[column] = categories_as_text(batch[column])
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


def fitted_stats(preprocessor) -> dict:
    """Every fitted statistic of a preprocessor chain's steps (`mean(x0)`, `unique_values(segment)`, ...)."""
    stats: dict = {}
    for step in getattr(preprocessor, "_preprocessors", [preprocessor]):
        stats.update(getattr(step, "stats_", None) or {})
    return stats


def fitted_categories(preprocessor, columns: list[str]) -> dict[str, list[str]]:
    """The categories the fitted one-hot encoder kept per column (its most frequent, `__missing__` aside)."""
    stats = fitted_stats(preprocessor)
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
            return cls.of_classes(pd.unique(labels.dropna()).tolist(), name)
        return cls(task=task, mean=float(labels.mean()), std=float(labels.std()) or 1.0)

    @classmethod
    def of_classes(cls, values: list, name: str = "label") -> TargetEncoding:
        """The classification encoding of the distinct label values (an aggregation's result)."""
        values = [v for v in values if not pd.isna(v)]
        if len(values) < 2:
            raise UserError(f"label {name!r} has {len(values)} class(es) "
                            f"({', '.join(map(str, values[:1])) or 'no values'}): a classifier needs two or more; "
                            "check data.label, or set data.task: regression for a number")
        try:
            return cls(task="classification", classes=sorted(values))
        except TypeError:  # mixed types (e.g. 1 and "1"): order them as text
            return cls(task="classification", classes=sorted(values, key=str))

    def constant_guess(self, label_counts: dict[str, float], label_mean: float) -> float:
        """What a trivial model predicts: the majority class's index, or the training mean."""
        if self.classes is None:
            return label_mean
        return float(max(range(len(self.classes)), key=lambda i: label_counts.get(str(self.classes[i]), 0.0)))


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


def served_form(batch: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Rows as serving sees and the monitor profiles them: numbers (booleans as 0/1) as float64, categories as text
    (an integer code as "7", a null kept a null), a class label as text."""
    out = pd.DataFrame(index=range(len(batch)))
    for column in spec.numeric:
        out[column] = as_numbers(batch[column])
    for column in spec.categorical:
        out[column] = categories_as_text(batch[column], missing=None)
    labels = batch[spec.label].reset_index(drop=True)
    out[spec.label] = labels.astype(str).astype(object) if spec.task == "classification" else as_numbers(labels)
    return out


@dataclass(frozen=True)
class TrainSummary:
    """What one profile of the train split says: the spec without constant features (and with `nullable` set),
    each numeric feature's median (its imputed value), and the label's counts and mean."""

    spec: FeatureSpec
    medians: dict[str, float]
    label_counts: dict[str, float]
    label_mean: float
    label_std: float


def summarize_train(profile: bytes, spec: FeatureSpec) -> TrainSummary:
    """Read the train split's merged profile: constant features are dropped (with a warning), features with nulls
    are `nullable`, medians come from the KLL sketch."""
    reader = ProfileReader(profile)
    nullable = [c for c in spec.features if reader.null_counts(c)[1] > 0]
    constant = []
    for column in spec.numeric:
        span = reader.quantiles(column, [0.0, 1.0])
        if (span is None or span[0] == span[1]) and column not in nullable:
            constant.append(column)
    constant += [c for c in spec.categorical if len(reader.counts(c)) <= 1 and c not in nullable]
    for column in constant:
        logger.warning("warning: feature %r is constant in the train split: dropped", column)
    keep = [c for c in spec.features if c not in constant]
    if not keep:
        raise UserError("every feature is constant in the train split: there is nothing to learn from")
    spec = spec.model_copy(update={"numeric": [c for c in spec.numeric if c in keep],
                                   "categorical": [c for c in spec.categorical if c in keep],
                                   "boolean": [c for c in spec.boolean if c in keep],
                                   "nullable": [c for c in nullable if c in keep]})
    medians = {c: _finite((reader.quantiles(c, [0.5]) or [0.0])[0]) for c in spec.numeric}
    moments = reader.moments(spec.label)
    return TrainSummary(spec, medians, reader.counts(spec.label), moments[0], moments[1])


def _finite(value) -> float:
    return 0.0 if value is None or not np.isfinite(value) else float(value)


@dataclass
class PreparedData:
    """What the data stage hands to training: lazy split datasets (read from the split cache), the fitted state,
    the train split's profile (the bundle's reference), and the version."""

    spec: FeatureSpec
    version: DatasetVersion
    preprocessor: Any
    target: TargetEncoding
    cache: SplitCache
    fold: tuple[int, int] | None
    summary: TrainSummary
    train_profile: bytes
    materialize: bool = False
    _inputs: dict = field(default_factory=dict, repr=False)

    def raw(self, split: str):
        """A lazy Ray Dataset of one split's raw rows (this fold's, for train and val)."""
        return self.cache.read(split, self.fold)

    def model_inputs(self, split: str):
        """A Ray Dataset of (features, target) rows for training: streamed from the split cache each epoch, or,
        below `data.materialize_below_mb`, encoded once into the object store (never into this process)."""
        if split in self._inputs:
            return self._inputs[split]
        inputs = self.raw(split).map_batches(to_model_inputs, fn_args=(self.preprocessor, self.spec, self.target),
                                             batch_format="pandas")
        if self.materialize:
            self._inputs[split] = inputs = inputs.materialize()
        return inputs

    @property
    def num_features(self) -> int:
        return int(encode_rows(self.preprocessor, self.spec, self.raw("train").limit(1).to_pandas()).shape[1])


MIN_ROWS = 20  # below this the three splits cannot all have rows


def preflight(cfg: DataConfig, data_dir) -> tuple[DatasetVersion, FeatureSpec]:
    """What can be checked of a data source before Ray starts: the files exist and read, the label and the
    features make sense, there are rows enough to split. Each problem is one UserError naming the fix."""
    version = fingerprint(source_files(cfg, data_dir), Path(data_dir) / FINGERPRINT_CACHE)
    spec = infer_spec(cfg, version.columns)
    if version.num_rows < MIN_ROWS:
        raise UserError(f"{cfg.source}: {version.num_rows} row(s) is too few to split into train, val and holdout "
                        f"(at least {MIN_ROWS}; the data gate's gate.data.min_rows sets the real floor)")
    if spec.task == "classification":  # the label column streamed until two classes show: an hour of training saved
        TargetEncoding.of_classes(label_values(version.files, spec.label, enough=2), spec.label)
    return version, spec


def split_data(cfg: DataConfig, paths: RuntimePaths) -> tuple[SplitCache, FeatureSpec]:
    """The data config's split cache (written on first use: one streaming pass) and its inferred spec."""
    version = fingerprint(source_files(cfg, paths.data_dir), paths.data_dir / FINGERPRINT_CACHE)
    spec = infer_spec(cfg, version.columns)
    labelled = cfg.model_copy(update={"label": spec.label})
    cache = SplitCache.locate(version, labelled, paths.storage_path)
    counts = cache.ensure(labelled)
    if counts["train"] == 0:
        raise UserError("the train split is empty: the dataset is too small for the configured fractions")
    return cache, spec


def prepare(cfg: DataConfig, paths: RuntimePaths, fold: tuple[int, int] | None = None) -> PreparedData:
    """Split (once per DatasetVersion), profile train, fit the preprocessor on train only: nothing is materialised.

    With `fold=(k, i)`, val is the i-th of k folds of the rows outside holdout and train is the rest.
    """
    cache, spec = split_data(cfg, paths)
    train = cache.read("train", fold)
    profile = profile_dataset(train, served_form, spec)
    summary = summarize_train(profile, spec)
    spec = summary.spec
    preprocessor = build_preprocessor(spec, summary.medians, cfg.max_categories)
    preprocessor = preprocessor.fit(train.map_batches(normalize_rows, fn_args=(spec,), batch_format="pandas"))
    if spec.task == "classification":
        target = TargetEncoding.of_classes(train.unique(spec.label), spec.label)
    else:
        target = TargetEncoding(task="regression", mean=summary.label_mean, std=summary.label_std or 1.0)
    small = cache.size_bytes(["train", "val"]) < cfg.materialize_below_mb * 1024**2
    return PreparedData(spec, cache.version, preprocessor, target, cache, fold, summary, profile, materialize=small)


def holdout_version(version: DatasetVersion, cfg: DataConfig) -> str:
    """A version id for exactly the holdout rows of a data config (data + split settings)."""
    key = f"{version.id}:{cfg.seed}:{cfg.val_fraction}:{cfg.holdout_fraction}:holdout"
    return hashlib.sha256(key.encode()).hexdigest()[:16]
