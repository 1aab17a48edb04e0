"""FeedbackLog: the router's answers remembered by request id, scored when their labels arrive, and kept as
Parquet rows for the next retraining."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from pathlib import Path

import pandas as pd

from ray_app.serve.validation import RequestError, check_labels, describe


class FeedbackLog:
    """Answers remembered by request id, and the labelled rows they become, flushed to Parquet for retraining.

    Ids live in the router replica that answered; with several router replicas, send feedback through the
    same replica (or keep one router replica, the default).
    """

    def __init__(self, folder: str | None, flush_rows: int, capacity: int):
        self.folder = Path(folder) if folder else None
        self.flush_rows, self.capacity = flush_rows, capacity
        self.answers: OrderedDict[str, tuple] = OrderedDict()
        self.rows: list[dict] = []
        self.part = f"{uuid.uuid4().hex[:8]}"
        self.files = 0

    def remember(self, request_id: str, variant: str, instances: list, predictions: list, classes: bool) -> None:
        self.answers[request_id] = (variant, instances, predictions, classes)
        while len(self.answers) > self.capacity:
            self.answers.popitem(last=False)

    def label(self, request_id: str, labels: list) -> tuple[str, list]:
        """Per instance: whether the prediction was right (classification) or its absolute error (regression)."""
        if request_id not in self.answers:
            raise RequestError(404, f"unknown or expired request_id {describe(request_id)}")
        variant, instances, predictions, classes = self.answers[request_id]
        check_labels(labels, len(predictions), regression=not classes)
        outcomes = [str(p) == str(y) if classes else abs(float(p) - float(y))
                    for p, y in zip(predictions, labels, strict=True)]
        del self.answers[request_id]
        now = time.time()
        self.rows += [{**row, "label": y, "prediction": p, "variant": variant, "request_id": request_id,
                       "labelled_at": now} for row, p, y in zip(instances, predictions, labels, strict=True)]
        if len(self.rows) >= self.flush_rows:
            self.flush()
        return variant, outcomes

    def flush(self) -> None:
        if not self.rows or self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(self.rows)
        frame["label"] = frame["label"].astype(str) if frame["label"].map(type).nunique() > 1 else frame["label"]
        frame.to_parquet(self.folder / f"feedback-{self.part}-{self.files:05d}.parquet", index=False)
        self.files += 1
        self.rows = []
