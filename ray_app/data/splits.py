"""The split cache: one streaming pass per DatasetVersion gives every row its split and fold key (from a seeded hash
of its content) and writes Parquet partitions under the storage path; training, tuning, CV, the gate, export and
drift read those partitions lazily, so the gate's holdout is the training holdout by construction."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from ray_app.config import DataConfig, UserError
from ray_app.data.sources import (
    DatasetVersion,
    DataSourceError,
    check_readable,
    filesystem,
    read_dataset,
    read_parquet,
    resolve_files,
)

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "holdout")
SPLIT_COLUMN = "__split"
FOLD_COLUMN = "__fold_key"
COMPLETE_MARKER = "_COMPLETE.json"
CACHE_FOLDER = "splits"


def assign_splits(frame: pd.DataFrame, seed: int, val_fraction: float, holdout_fraction: float) -> np.ndarray:
    """Give each row a split from a seeded hash of its content.

    The assignment does not depend on row order or on how Ray Data cuts blocks, so the same data and
    seed always give the same split, and duplicated rows never straddle train and holdout.
    """
    hashed = pd.util.hash_pandas_object(frame, index=False, hash_key=f"{seed % 10**16:016d}").to_numpy()
    u = (hashed % np.uint64(1_000_003)).astype(np.float64) / 1_000_003
    return np.where(u < holdout_fraction, "holdout", np.where(u < holdout_fraction + val_fraction, "val", "train"))


def fold_keys(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """A second seeded content hash per row (independent of the split's): fold `i` of `k` is `key % k == i`."""
    return pd.util.hash_pandas_object(frame, index=False, hash_key=f"{(seed + 7919) % 10**16:016d}").to_numpy()


def assign_folds(frame: pd.DataFrame, seed: int, folds: int) -> np.ndarray:
    """Give each row one of `folds` folds."""
    return (fold_keys(frame, seed) % np.uint64(folds)).astype(np.int64)


def _tag_rows(batch: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Split and fold key per row; rows without a label teach nothing and score nothing, so they go."""
    splits = assign_splits(batch, cfg.seed, cfg.val_fraction, cfg.holdout_fraction)
    keys = fold_keys(batch, cfg.seed)
    keep = batch[cfg.label].notna().to_numpy() if cfg.label in batch else np.ones(len(batch), bool)
    out = batch.loc[keep].reset_index(drop=True)
    out[SPLIT_COLUMN] = splits[keep]
    out[FOLD_COLUMN] = keys[keep]
    return out


def _in_fold(batch: pd.DataFrame, name: str, folds: int, index: int) -> pd.DataFrame:
    in_fold = (batch[FOLD_COLUMN].to_numpy(dtype=np.uint64) % np.uint64(folds)) == index
    return batch.loc[in_fold if name == "val" else ~in_fold].reset_index(drop=True)


def _keep_share(batch: pd.DataFrame, share: float) -> pd.DataFrame:
    keys = batch[FOLD_COLUMN].to_numpy(dtype=np.uint64) // np.uint64(1 << 20)  # the high bits: not the fold's
    keep = (keys % np.uint64(1_000_003)).astype(np.float64) / 1_000_003 < share
    return batch.loc[keep].reset_index(drop=True)


@dataclass(frozen=True)
class SplitCache:
    """The Parquet partitions of one DatasetVersion under one set of split settings (seed, fractions, label)."""

    root: str
    version: DatasetVersion

    @classmethod
    def locate(cls, version: DatasetVersion, cfg: DataConfig, storage_path: str) -> SplitCache:
        settings = json.dumps([cfg.seed, cfg.val_fraction, cfg.holdout_fraction, cfg.label], default=str)
        key = hashlib.sha256(settings.encode()).hexdigest()[:8]
        return cls(f"{storage_path.rstrip('/')}/{CACHE_FOLDER}/{version.id}-{key}", version)

    def _split_root(self, name: str) -> str:
        return f"{self.root}/{SPLIT_COLUMN}={name}"

    def counts(self) -> dict[str, int] | None:
        """Rows per split when the cache is complete; None when it is not written (or was cut short)."""
        fs, inner = filesystem(f"{self.root}/{COMPLETE_MARKER}")
        try:
            with fs.open_input_stream(inner) as stream:
                return json.loads(stream.read())["rows"]
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return None

    def ensure(self, cfg: DataConfig) -> dict[str, int]:
        """Write the partitions unless a complete cache is there; returns the rows per split."""
        if (counts := self.counts()) is not None:
            return counts
        fs, inner = filesystem(self.root)
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:  # a pass that was cut short
            fs.delete_dir(inner)
        tagged = read_dataset(self.version.files).map_batches(_tag_rows, fn_args=(cfg,), batch_format="pandas")
        tagged.write_parquet(self.root, partition_cols=[SPLIT_COLUMN])
        counts = {name: check_readable(self.files(name)) for name in SPLITS}
        with fs.open_output_stream(f"{inner}/{COMPLETE_MARKER}") as stream:
            stream.write(json.dumps({"version": self.version.id, "rows": counts}).encode())
        logger.info("split %s once: %s under %s", self.version.id, counts, self.root)
        return counts

    def files(self, name: str) -> list[str]:
        """The Parquet files of one split (readable without Ray: pyarrow, pandas); none for an empty split."""
        try:
            return resolve_files(self._split_root(name))
        except DataSourceError:  # no rows went to this split: Ray Data wrote no folder for it
            return []

    def read(self, name: str, fold: tuple[int, int] | None = None, keep_fold_key: bool = False):
        """A lazy Ray Dataset of one split's raw rows. With `fold=(k, i)`, val is the i-th of k folds of the rows
        outside holdout and train is the rest."""
        names = ["train", "val"] if fold is not None and name != "holdout" else [name]
        files = [f for n in names for f in self.files(n)]
        if not files:
            return _empty_like(self)
        ds = read_parquet(files, partitioning=None)
        if fold is not None and name != "holdout":
            ds = ds.map_batches(_in_fold, fn_args=(name, *fold), batch_format="pandas")
        return ds if keep_fold_key else ds.drop_columns([FOLD_COLUMN])

    def subsample(self, name: str, rows: int, keep_fold_key: bool = False):
        """A lazy Ray Dataset of about `rows` rows of one split (all of it when smaller), picked by the rows'
        content hash: the same data always gives the same rows."""
        total = (self.counts() or {}).get(name, 0)
        ds = self.read(name, keep_fold_key=True)
        if total > rows:
            ds = ds.map_batches(_keep_share, fn_args=(rows / total,), batch_format="pandas")
        return ds if keep_fold_key else ds.drop_columns([FOLD_COLUMN])

    def sample(self, name: str, rows: int) -> pd.DataFrame:
        """`subsample` as a DataFrame in this process, in a fixed order (for small samples: checks, plots)."""
        frame = self.subsample(name, rows, keep_fold_key=True).to_pandas()
        if frame.empty:
            return frame.drop(columns=[FOLD_COLUMN], errors="ignore")
        return frame.sort_values(FOLD_COLUMN, kind="stable").drop(columns=[FOLD_COLUMN]).reset_index(drop=True)

    def size_bytes(self, names: list[str]) -> int:
        """Bytes on disk of some splits' Parquet files."""
        total = 0
        for name in names:
            for path in self.files(name):
                fs, inner = filesystem(path)
                total += int(fs.get_file_info(inner).size or 0)
        return total


def _empty_like(cache: SplitCache):
    import ray.data

    for name in SPLITS:
        if files := cache.files(name):
            import pyarrow.parquet as pq

            fs, inner = filesystem(files[0])
            schema = pq.read_schema(inner, filesystem=fs)
            return ray.data.from_arrow(schema.empty_table()).drop_columns([FOLD_COLUMN])
    raise UserError(f"the split cache {cache.root} holds no rows: the data source has no labelled rows")


def clear(storage_path: str) -> int:
    """Delete every cached split under a storage path; returns how many versions were removed."""
    fs, inner = filesystem(f"{storage_path.rstrip('/')}/{CACHE_FOLDER}")
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return 0
    entries = fs.get_file_info(pafs.FileSelector(inner))
    fs.delete_dir(inner)
    return len(entries)
