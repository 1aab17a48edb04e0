"""`LiveProfiler`: what a model variant keeps of the rows it serves, profiled in batches off the request path."""

from __future__ import annotations

import asyncio
import logging
import random

import numpy as np
import pandas as pd

from ray_app.config import MonitorConfig
from ray_app.monitor.drift import PREDICTION, StreamSchema
from ray_app.profiles import profile_frame

logger = logging.getLogger("ray.serve")


class LiveProfiler:
    """Buffers (features, predictions) as plain arrays; every `flush_rows` rows or `flush_s` seconds, builds one
    frame, profiles it in a thread and sends the profile to the DriftMonitor. Observing costs the request one list
    append, and with `sample_fraction` < 1 most requests not even that."""

    def __init__(self, monitor, model: str, variant: str, reference: bytes, schema: StreamSchema,
                 settings: MonitorConfig):
        self.monitor, self.model, self.variant, self.settings = monitor, model, variant, settings
        self.reference, self.schema = reference, schema
        self.pending: list[tuple[np.ndarray, list[list], list]] = []
        self.rows = 0
        self.registered = False
        self.task: asyncio.Task | None = None
        self._flushing = False
        self._tasks: set[asyncio.Task] = set()

    def observe(self, numeric: np.ndarray, categorical: list[list], predictions: list) -> None:
        """One request's validated features (numeric array, one list per categorical feature) and predictions."""
        if self.settings.sample_fraction < 1 and random.random() >= self.settings.sample_fraction:
            return
        self.pending.append((numeric, categorical, predictions))
        self.rows += len(predictions)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        elif self.rows >= self.settings.flush_rows and not self._flushing:
            self._flush_soon()

    def warm(self) -> None:
        """Profile one row now, at model load: whylogs' import and first use cost ~1 s of the replica's CPU and
        GIL, and on the first flush they stalled the requests in flight (bench/RESULTS.md, monitoring)."""
        numeric = np.zeros((1, len(self.schema.numeric)), dtype=np.float32)
        self._profile([(numeric, [[""] for _ in self.schema.categorical], [0])])

    def close(self) -> None:
        """Stop the periodic flush and send what is buffered (the variant moved to another model)."""
        if self.task is not None:
            self.task.cancel()
        if self.pending:
            self._flush_soon()

    def _flush_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_s)
            await self.flush()

    async def flush(self) -> None:
        if not self.pending or self._flushing:
            return
        self._flushing = True
        batch, self.pending, rows, self.rows = self.pending, [], self.rows, 0
        try:
            if not self.registered:
                await self.monitor.register.remote(self.model, self.variant, self.reference, self.schema)
                self.registered = True
            profile = await asyncio.to_thread(self._profile, batch)
            await self.monitor.merge.remote(self.model, self.variant, profile, rows)
        except Exception:  # monitoring must never break serving; the batch is lost and logged
            logger.exception("monitor: dropped a batch of %d rows from %s/%s", rows, self.model, self.variant)
        finally:
            self._flushing = False

    def _profile(self, batch: list[tuple[np.ndarray, list[list], list]]) -> bytes:
        numeric = np.concatenate([item[0] for item in batch])
        frame = pd.DataFrame(numeric, columns=self.schema.numeric)
        for j, name in enumerate(self.schema.categorical):
            frame[name] = [value for item in batch for value in item[1][j]]
        predictions = [p for *_, preds in batch for p in preds]
        frame[PREDICTION] = predictions if self.schema.regression else [str(p) for p in predictions]
        return profile_frame(frame)
