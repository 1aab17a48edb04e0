"""Offline batch scoring of Parquet/CSV files with Ray Data and the same ModelBundle that Serve uses."""

from __future__ import annotations

import pandas as pd

from ray_app.data.sources import DataSourceError, check_readable, read_dataset, resolve_files


class BundlePredictor:
    """A Ray Data callable class: loads the bundle once per actor and predicts each batch."""

    def __init__(self, loader, model_uri: str):
        self.bundle, self.ref = loader(model_uri)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = self.bundle.predict(batch)
        batch = batch.copy()
        batch["prediction"] = out["predictions"]
        if "probabilities" in out:
            batch["confidence"] = [max(p) for p in out["probabilities"]]
        batch["model_version"] = self.ref.uri
        return batch


def _written(output: str) -> dict[str, int]:
    """Rows per Parquet file under `output` (footers only)."""
    try:
        files = resolve_files(output)
    except DataSourceError:
        return {}
    return {path: check_readable([path]) for path in files}


def score_files(source: str, output: str, model_uri: str, loader, concurrency: int = 1,
                batch_size: int = 4096) -> int:
    """Score every row of `source` and write Parquet to `output` as the batches are scored (nothing is held back
    to be written at the end); returns the number of rows scored."""
    before = _written(output)
    ds = read_dataset(resolve_files(source))
    scored = ds.map_batches(BundlePredictor, fn_constructor_args=(loader, model_uri), batch_format="pandas",
                            batch_size=batch_size, concurrency=concurrency)
    scored.write_parquet(output)
    return sum(rows for path, rows in _written(output).items() if path not in before)
