"""Data sources: built-in sets, Parquet/CSV readers through Ray Data, and the DatasetVersion fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from ray_app.config import DataConfig, UserError

BUILTIN_SETS = ("synthetic", "breast_cancer", "diabetes")
SUPPORTED_SUFFIXES = (".parquet", ".csv")
FINGERPRINT_CACHE = "fingerprints"  # under the data folder: versions by file (path, size, mtime)


class DataSourceError(UserError):
    """A data source that cannot be found, read or understood."""


class FeatureSpec(BaseModel):
    """Which columns are features (numeric, categorical), which is the label, and the task. `boolean` features are
    numeric 0/1; `nullable` ones had nulls in the train split (imputed, with a missing indicator if numeric)."""

    model_config = ConfigDict(frozen=True)

    label: str
    numeric: list[str]
    categorical: list[str]
    task: Literal["classification", "regression"]
    boolean: list[str] = []
    nullable: list[str] = []

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class DatasetVersion(BaseModel):
    """Content fingerprint of the input files and their schema: same bytes, same version."""

    model_config = ConfigDict(frozen=True)

    id: str
    files: list[str]
    columns: dict[str, str]
    num_rows: int


def synthetic_frame(rows: int, drift: float = 0.0, seed: int = 0, concept_drift: float = 0.0) -> pd.DataFrame:
    """A seeded binary-classification table with numeric and categorical columns.

    `drift` shifts every numeric mean by that many standard deviations (covariate shift: the label rule stays the
    same); `concept_drift` changes the rule itself: x5, irrelevant before, lowers the logit by that much per unit.
    """
    rng = np.random.default_rng(seed)
    numeric = rng.normal(loc=drift, scale=1.0, size=(rows, 6))
    segment = rng.choice(["a", "b", "c", "d"], size=rows, p=[0.4, 0.3, 0.2, 0.1])
    channel = rng.choice(["web", "store", "app"], size=rows)
    segment_effect = pd.Series(segment).map({"a": -0.5, "b": 0.0, "c": 0.5, "d": 1.0}).to_numpy()
    logit = (
        1.5 * numeric[:, 0] - 1.0 * numeric[:, 1] + 0.8 * numeric[:, 2] * numeric[:, 3]
        + segment_effect + 0.3 * (channel == "app") + rng.normal(scale=0.5, size=rows)
    ) - concept_drift * numeric[:, 5]
    frame = pd.DataFrame(numeric, columns=[f"x{i}" for i in range(6)])
    frame["segment"] = segment
    frame["channel"] = channel
    frame["label"] = (logit > 0).astype("int64")
    return frame


def _sklearn_frame(name: str) -> pd.DataFrame:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}[name]
    frame = loader(as_frame=True).frame
    frame.columns = [str(col).replace(" ", "_") for col in frame.columns]
    return frame.rename(columns={"target": "label"})


def builtin_frame(cfg: DataConfig) -> pd.DataFrame:
    """The built-in set named by `cfg.source` as a DataFrame."""
    if cfg.source == "synthetic":
        return synthetic_frame(cfg.synthetic.rows, cfg.synthetic.drift, cfg.seed, cfg.synthetic.concept_drift)
    return _sklearn_frame(cfg.source)


def materialize_builtin(cfg: DataConfig, data_dir: Path) -> Path:
    """Write a built-in set to Parquet once, so that it is read and fingerprinted like any file."""
    suffix = ""
    if cfg.source == "synthetic":
        concept = f"-concept{cfg.synthetic.concept_drift:g}" if cfg.synthetic.concept_drift else ""
        suffix = f"-rows{cfg.synthetic.rows}-drift{cfg.synthetic.drift:g}{concept}-seed{cfg.seed}"
    path = data_dir / f"{cfg.source}{suffix}.parquet"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        builtin_frame(cfg).to_parquet(tmp, index=False)
        tmp.replace(path)
    return path


def resolve_files(source: str) -> list[str]:
    """Expand a path or URI (file or folder) into a sorted list of Parquet/CSV files."""
    try:
        fs, root = filesystem(source)
    except (ValueError, OSError) as exc:
        raise DataSourceError(f"cannot open data source {source!r}: {exc}") from None
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataSourceError(f"data source {source!r} does not exist")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(i.path for i in infos if i.is_file and i.path.endswith(SUPPORTED_SUFFIXES))
    else:
        files = [root]
    if not files or not all(f.endswith(SUPPORTED_SUFFIXES) for f in files):
        kinds = ", ".join(SUPPORTED_SUFFIXES)
        raise DataSourceError(f"data source {source!r}: expected Parquet or CSV files ({kinds})")
    scheme = source.split("://", 1)[0] + "://" if "://" in source else ""
    return [scheme + f if scheme and not f.startswith(scheme) else f for f in files]


def source_files(cfg: DataConfig, data_dir: Path) -> list[str]:
    """The files behind a data config: a built-in set is written to Parquet first."""
    files = [str(materialize_builtin(cfg, data_dir))] if cfg.source in BUILTIN_SETS else resolve_files(cfg.source)
    return with_feedback(files, cfg.feedback, Path(data_dir)) if cfg.feedback else files


def with_feedback(files: list[str], feedback: str, data_dir: Path) -> list[str]:
    """The data files plus one file of the labelled feedback rows, cast to the data's schema and named by its
    content (so the version changes with the feedback). The data itself is not read. No feedback yet: the data."""
    try:
        extra = pads.dataset(resolve_files(feedback), format="parquet").to_table()
    except DataSourceError:
        return files
    schema = pa.schema([field.with_type(pa.from_numpy_dtype(np.dtype("float64"))) if pa.types.is_null(field.type)
                        else field for field in _arrow_schema(files[0])])
    missing = [name for name in schema.names if name not in extra.column_names]
    if missing:
        raise DataSourceError(f"feedback rows in {feedback} lack column(s) {', '.join(missing)}")
    try:
        extra = extra.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise DataSourceError(f"feedback rows in {feedback} do not fit the data's columns: {exc}") from None
    sink = pa.BufferOutputStream()
    csv = files[0].endswith(".csv")
    (pacsv.write_csv if csv else pq.write_table)(extra, sink)
    data = sink.getvalue().to_pybytes()
    path = data_dir / f"feedback-{hashlib.sha256(data).hexdigest()[:16]}{'.csv' if csv else '.parquet'}"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return [*files, str(path)]


def _arrow_schema(path: str) -> pa.Schema:
    fs, inner = filesystem(path)
    if path.endswith(".parquet"):
        return pq.read_schema(inner, filesystem=fs)
    with fs.open_input_stream(inner) as stream:  # Arrow's inference, as Ray Data's read_csv will see the file
        return pacsv.open_csv(stream).schema


def head_rows(files: list[str], rows: int) -> pd.DataFrame:
    """The first `rows` rows of Parquet or CSV files, read without Ray (for a look at a few hundred rows)."""
    import pyarrow.dataset as pads

    fs, _ = filesystem(files[0])
    paths = [filesystem(f)[1] for f in files]
    kind = "parquet" if files[0].endswith(".parquet") else "csv"
    try:
        return pads.dataset(paths, filesystem=fs, format=kind).head(rows).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataSourceError(f"cannot read {files[0]}: {exc}") from None


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))


def _checked_rows(fs: pafs.FileSystem, inner: str, path: str) -> int:
    """The rows of one file, read the cheap way (Parquet: the footer; CSV: a streaming parse, one block at a time)."""
    try:
        if path.endswith(".parquet"):
            return pq.ParquetFile(fs.open_input_file(inner)).metadata.num_rows
        rows = 0
        with fs.open_input_stream(inner) as stream:
            for batch in pacsv.open_csv(stream):
                rows += batch.num_rows
        return rows
    except (pa.ArrowException, OSError) as exc:
        kind = "Parquet" if path.endswith(".parquet") else "CSV"
        detail = str(exc).strip().splitlines()[0][:200] or type(exc).__name__
        raise DataSourceError(f"{path} is not a readable {kind} file ({detail}): re-export it, or move it out of "
                              "the data source") from None


def _read_schema(path: str) -> dict[str, str]:
    return {field.name: str(field.type) for field in _arrow_schema(path)}


def fingerprint(files: list[str], cache_dir: Path | None = None) -> DatasetVersion:
    """Hash the bytes of every file (in sorted order) and the schema into a DatasetVersion. Every file is checked
    on the way: a Parquet footer that cannot be read, or a CSV row of the wrong width, is a DataSourceError that
    names the file.

    With `cache_dir`, a version is remembered under the files' (path, size, mtime): unchanged files are not read
    again by the next stage (a file rewritten with the same size and mtime would keep its old version, as `make`
    would think it unchanged)."""
    stats = _file_stats(files)
    cached = cache_dir / f"{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:24]}.json" if cache_dir else None
    if cached is not None and cached.exists():
        try:
            return DatasetVersion.model_validate_json(cached.read_text())
        except ValueError:
            pass
    digest = hashlib.sha256()
    num_rows = 0
    for path in sorted(files):
        fs, inner = filesystem(path)
        with fs.open_input_stream(inner) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
        num_rows += _checked_rows(fs, inner, path)
    columns = _read_schema(sorted(files)[0])
    digest.update(json.dumps(columns, sort_keys=True).encode())
    version = DatasetVersion(id=digest.hexdigest()[:16], files=sorted(files), columns=columns, num_rows=num_rows)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(version.model_dump_json())
        tmp.replace(cached)
    return version


def check_readable(files: list[str]) -> int:
    """Read every file's Parquet footer (or parse its CSV) without hashing it; returns the rows. A file that cannot
    be read is a DataSourceError naming it."""
    rows = 0
    for path in files:
        fs, inner = filesystem(path)
        rows += _checked_rows(fs, inner, path)
    return rows


def _file_stats(files: list[str]) -> list[tuple[str, int, int]]:
    out = []
    for path in sorted(files):
        fs, inner = filesystem(path)
        info = fs.get_file_info(inner)
        mtime = info.mtime_ns if info.mtime_ns is not None else -1
        out.append((path, int(info.size or 0), int(mtime)))
    return out


def label_values(files: list[str], column: str, enough: int | None = None) -> list:
    """The distinct values of one column, streamed batch by batch without Ray (Parquet reads only that column);
    with `enough`, it stops as soon as that many have shown."""
    import pyarrow.compute as pc

    fmt = "parquet" if files[0].endswith(".parquet") else "csv"
    seen: set = set()
    try:
        for batch in pads.dataset(files, format=fmt).to_batches(columns=[column]):
            seen.update(v for v in pc.unique(batch.column(0)).to_pylist() if v is not None)
            if enough is not None and len(seen) >= enough:
                break
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"cannot read column {column!r}: {str(exc).strip().splitlines()[0][:200]}") from None
    return sorted(seen, key=str)


def read_parquet(files: list[str], **options):
    """`ray.data.read_parquet` on Parquet datasource V1: Ray 2.60's V2 starts 32 FooterReader actors for every
    read (about a minute of CPU on two cores, for each of the many small reads of the split cache)."""
    import ray.data

    ray.data.DataContext.get_current().use_datasource_v2 = False
    return ray.data.read_parquet(files, **options)


def read_dataset(files: list[str]):
    """Read Parquet or CSV files into a Ray Dataset."""
    import ray.data

    if all(f.endswith(".parquet") for f in files):
        return read_parquet(files)
    if all(f.endswith(".csv") for f in files):
        return ray.data.read_csv(files)
    raise DataSourceError("mixed Parquet and CSV files in one source are not supported")


DATE_TYPES = ("date", "timestamp", "datetime", "time64", "duration")


def is_numeric_type(dtype: str) -> bool:
    """Arrow or pandas type names that train as numbers: integers (nullable ones too), floats, booleans."""
    return dtype.lower().startswith(("int", "uint", "float", "double", "bool", "halffloat"))


def infer_spec(cfg: DataConfig, columns: dict[str, str]) -> FeatureSpec:
    """Decide label, features and task from the config, falling back to the schema's types (Arrow or pandas
    type names). Dates and timestamps are refused with the fix; `data.exclude` drops ID and leaky columns."""
    builtin_label = "label" if cfg.source in BUILTIN_SETS else None
    label = cfg.label or builtin_label
    if label is None:
        raise DataSourceError(f"data.label is required for source {cfg.source!r}: name the column to predict")
    if label not in columns:
        raise DataSourceError(f"label column {label!r} not in the data (columns: {', '.join(columns)}): "
                              "set data.label to one of them")
    excluded = set(cfg.exclude)
    unknown = sorted(excluded - set(columns))
    if unknown:
        raise DataSourceError(f"data.exclude names column(s) not in the data: {', '.join(unknown)}")
    if label in excluded:
        raise DataSourceError(f"data.exclude names the label {label!r}")
    named = set(cfg.numeric or []) | set(cfg.categorical or [])
    missing = sorted(named - set(columns))
    if missing:
        raise DataSourceError(f"feature columns not in the data: {', '.join(missing)}")
    rest = [c for c in columns if c != label and c not in named and c not in excluded]
    dates = [c for c in [*rest, *named] if columns[c].lower().startswith(DATE_TYPES)]
    if dates:
        raise DataSourceError(f"column {dates[0]!r} is a date/time ({columns[dates[0]]}), which the model cannot "
                              f"take as it is: add it to data.exclude, or derive numeric features from it (days "
                              f"since an event, month, weekday) before ingest")
    numeric = cfg.numeric if cfg.numeric is not None else [c for c in rest if is_numeric_type(columns[c])]
    categorical = (cfg.categorical if cfg.categorical is not None
                   else [c for c in rest if not is_numeric_type(columns[c]) and c not in numeric])
    if not numeric and not categorical:
        raise DataSourceError("no feature columns left after removing the label (and data.exclude)")
    boolean = [c for c in numeric if columns[c].lower().startswith("bool")]
    task = cfg.task or ("regression" if cfg.source == "diabetes"
                        or columns[label].lower().startswith(("float", "double", "halffloat")) else "classification")
    return FeatureSpec(label=label, numeric=list(numeric), categorical=list(categorical), task=task, boolean=boolean)
