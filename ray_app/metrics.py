"""Model metrics shared by training, the gates and monitoring: one definition of each figure."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from ray_app.config import UserError

PRIMARY_METRIC = {"classification": "roc_auc", "regression": "rmse"}
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "roc_auc": True, "rmse": False, "mae": False, "loss": False}


def metric_label(name: str, num_classes: int = 2) -> str:
    """A metric's name with the averaging it uses when there are more than two classes."""
    averaging = {"f1": "macro", "roc_auc": "one-vs-rest, macro"}.get(name) if num_classes > 2 else None
    return f"{name} ({averaging})" if averaging else name


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and ROC-AUC (one-vs-rest when there are more than two classes)."""
    y_pred = proba.argmax(axis=1)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1": float(skm.f1_score(y_true, y_pred, average="binary" if proba.shape[1] == 2 else "macro",
                                 zero_division=0)),
    }
    if len(np.unique(y_true)) < 2:
        out["roc_auc"] = math.nan
    elif proba.shape[1] == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=range(proba.shape[1])))
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Root mean squared error and mean absolute error."""
    err = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def baseline_metrics(task: str, constant: float, y_true: np.ndarray, num_classes: int = 2) -> dict[str, float]:
    """What a trivial model scores: always the majority class's index `constant` (classification), or always the
    training mean `constant` (regression)."""
    if task == "regression":
        return regression_metrics(y_true, np.full(len(y_true), float(constant)))
    proba = np.zeros((len(y_true), num_classes))
    proba[:, int(constant)] = 1.0
    return classification_metrics(y_true, proba)


def metric_value(name: str, y_true: np.ndarray, output: np.ndarray) -> float:
    """One named metric; `output` is class probabilities (classification) or predictions (regression)."""
    if name in ("rmse", "mae"):
        return regression_metrics(y_true, output)[name]
    if name == "accuracy":
        return float(np.mean(output.argmax(axis=1) == y_true))
    if name in ("f1", "roc_auc"):
        return classification_metrics(y_true, output)[name]
    raise UserError(f"unknown metric {name!r}: choose one of {', '.join(HIGHER_IS_BETTER)}")
