"""ModelBundle: what serving needs and nothing else, saved to and loaded from one folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from ray_app.config import UserError
from ray_app.data.preprocess import TargetEncoding, encode_rows, load_preprocessor
from ray_app.fastpath import FastPath, NotCompilable, export_onnx
from ray_app.train.model import MLPSpec, TabularMLP

BUNDLE_FORMAT = 1
_FILES = {"meta": "bundle.json", "weights": "weights.pt", "preprocessor": "preprocessor.bin",
          "reference": "reference_profile.bin"}


class FeatureSchema(BaseModel):
    """The input contract of a model: feature names and kinds, categories seen in training, the label."""

    model_config = ConfigDict(frozen=True)

    label: str
    task: str
    numeric: list[str]
    categorical: dict[str, list[str]]
    nullable: list[str] = []  # features that may be null: imputed as in training (others: 422 when null)
    boolean: list[str] = []  # numeric features that are booleans: true/false or 0/1

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass
class ModelBundle:
    """Weights, fitted preprocessor, schema, label encoding, metrics, DatasetVersion and reference profile."""

    mlp: MLPSpec
    state_dict: dict
    preprocessor_state: bytes
    schema: FeatureSchema
    target: TargetEncoding
    metrics: dict[str, float] = field(default_factory=dict)
    dataset_version: dict[str, Any] = field(default_factory=dict)
    reference_profile: bytes | None = None

    def __post_init__(self) -> None:
        self._model: TabularMLP | None = None
        self._preprocessor = None
        self._fast: FastPath | None = None

    def __getstate__(self) -> dict:  # sent to Ray Data scorers: the state, not the caches built from it
        return {k: v for k, v in self.__dict__.items() if k not in ("_model", "_preprocessor", "_fast")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def model(self) -> TabularMLP:
        if self._model is None:
            model = TabularMLP(self.mlp)
            model.load_state_dict(self.state_dict)
            self._model = model.eval()
        return self._model

    @property
    def preprocessor(self):
        if self._preprocessor is None:
            self._preprocessor = load_preprocessor(self.preprocessor_state)
        return self._preprocessor

    def encode(self, rows: pd.DataFrame) -> np.ndarray:
        """Raw feature rows to the float32 matrix the network reads, exactly as in training."""
        return encode_rows(self.preprocessor, self.schema, rows)

    @torch.no_grad()
    def outputs(self, rows: pd.DataFrame) -> np.ndarray:
        """The network's raw outputs for raw feature rows (logits, or the standardised regression target)."""
        return self.model(torch.from_numpy(self.encode(rows))).numpy()

    def answer(self, output: np.ndarray) -> dict[str, list]:
        """Raw outputs to predictions in the label's own values, plus class probabilities for classification."""
        if self.target.classes is None:
            values = output.astype(np.float64).reshape(-1) * self.target.std + self.target.mean
            return {"predictions": values.tolist()}
        proba = np.exp(output - output.max(axis=1, keepdims=True))
        proba /= proba.sum(axis=1, keepdims=True)
        classes = self.target.classes
        return {"predictions": [classes[i] for i in proba.argmax(axis=1)], "probabilities": proba.tolist()}

    def compile(self, tolerance: float) -> str:
        """Serve `score` through the fast path (numpy encoder + ONNX Runtime) when it matches the slow one within
        `tolerance`; returns which path serves, and why."""
        try:
            self._fast = FastPath.build(self, tolerance)
        except NotCompilable as exc:
            self._fast = None
            return f"slow path (transform_batch + torch): {exc}"
        return "fast path (compiled encoder + ONNX Runtime), checked against transform_batch + torch"

    @property
    def compiled(self) -> bool:
        """Whether `score` runs the fast path (`compile` accepted it)."""
        return self._fast is not None

    def frame(self, numeric: np.ndarray, categorical: list[list[str]]) -> pd.DataFrame:
        """Validated feature arrays as the raw-row DataFrame the fitted preprocessor reads."""
        columns = {name: numeric[:, j] for j, name in enumerate(self.schema.numeric)}
        columns.update(zip(self.schema.categorical, categorical, strict=True))
        return pd.DataFrame(columns, columns=self.schema.features)

    def score(self, numeric: np.ndarray, categorical: list[list[str]]) -> np.ndarray:
        """Raw outputs for validated feature arrays (numeric: rows x numeric features; one list per categorical
        feature): the fast path once `compile` accepted it, else the fitted preprocessor and torch."""
        if self._fast is not None:
            return self._fast.outputs(numeric, categorical)
        return self.outputs(self.frame(numeric, categorical))

    def predict(self, rows: pd.DataFrame) -> dict[str, list]:
        """Predictions in the label's own values, plus class probabilities for classification."""
        return self.answer(self.outputs(rows))

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict.values()) + len(self.preprocessor_state)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": BUNDLE_FORMAT,
            "mlp": self.mlp.model_dump(),
            "schema": self.schema.model_dump(),
            "target": {"task": self.target.task, "classes": self.target.classes,
                       "mean": self.target.mean, "std": self.target.std},
            "metrics": self.metrics,
            "dataset_version": self.dataset_version,
        }
        (folder / _FILES["meta"]).write_text(json.dumps(meta, indent=2, default=str))
        torch.save(self.state_dict, folder / _FILES["weights"])
        (folder / _FILES["preprocessor"]).write_bytes(self.preprocessor_state)
        if self.reference_profile is not None:
            (folder / _FILES["reference"]).write_bytes(self.reference_profile)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        folder = Path(folder)
        meta_path = folder / _FILES["meta"]
        if not meta_path.exists():
            raise FileNotFoundError(f"{folder} is not a model bundle (no {_FILES['meta']})")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != BUNDLE_FORMAT:
            raise UserError(f"{folder}: bundle format {meta.get('format')} is not supported (want {BUNDLE_FORMAT})")
        reference = folder / _FILES["reference"]
        return cls(
            mlp=MLPSpec(**meta["mlp"]),
            state_dict=torch.load(folder / _FILES["weights"], map_location="cpu", weights_only=True),
            preprocessor_state=(folder / _FILES["preprocessor"]).read_bytes(),
            schema=FeatureSchema(**meta["schema"]),
            target=TargetEncoding(**meta["target"]),
            metrics=meta["metrics"],
            dataset_version=meta["dataset_version"],
            reference_profile=reference.read_bytes() if reference.exists() else None,
        )


EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}


def export_model(bundle: ModelBundle, folder: str | Path, fmt: str) -> Path:
    """Write the bundle (preprocessor, schema, label map) plus the network compiled to TorchScript or ONNX."""
    if fmt not in EXPORT_FILES:
        raise UserError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FILES)}")
    folder = bundle.save(folder)
    target = folder / EXPORT_FILES[fmt]
    example = torch.zeros(2, bundle.mlp.in_features)
    if fmt == "torchscript":
        torch.jit.trace(bundle.model, example).save(str(target))
    else:
        export_onnx(bundle.model, bundle.mlp.in_features, str(target))
    return target


def run_exported(path: str | Path, fmt: str, features: np.ndarray) -> np.ndarray:
    """The exported network's raw outputs for an encoded feature matrix."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path)).eval()(torch.from_numpy(features)).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": features})[0]


@torch.no_grad()
def parity_error(bundle: ModelBundle, path: str | Path, fmt: str, rows: pd.DataFrame) -> float:
    """Largest absolute difference between the exported network and the bundle's own on these rows."""
    features = bundle.encode(rows)
    expected = bundle.model(torch.from_numpy(features)).numpy()
    return float(np.max(np.abs(run_exported(path, fmt, features) - expected)))


class ParityError(UserError):
    """An export whose outputs differ from the model's beyond the tolerance."""


def export_checked(bundle: ModelBundle, folder: str | Path, fmt: str, rows: pd.DataFrame,
                   tolerance: float) -> tuple[Path, float]:
    """Export, then compare the exported network with the bundle's on `rows`; refuse it beyond `tolerance`."""
    target = export_model(bundle, folder, fmt)
    error = parity_error(bundle, target, fmt, rows)
    if error > tolerance:
        raise ParityError(f"{fmt} export differs from the model by {error:.2e} (tolerance {tolerance:.0e})")
    return target, error
