"""`DriftMonitor`: merges the variants' batch profiles per model, variant and time window, judges each closed
window against the reference, exports the result and keeps every window profile on disk.

The open window is written to disk at every merge, so a replica that restarts (or is killed) resumes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ray import serve

from ray_app.config import MonitorConfig
from ray_app.monitor.drift import DriftReport, StreamSchema, compare_profiles
from ray_app.monitor.exporter import DriftExporter
from ray_app.profiles import merge_profiles

logger = logging.getLogger("ray.serve")


@dataclass
class Stream:
    """One model variant: its reference and schema, and the window being filled."""

    model: str
    variant: str
    reference: bytes
    schema: StreamSchema
    window_start: float | None = None
    profile: bytes | None = None
    rows: int = 0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class WindowStore:
    """`<folder>/<model>/<variant>/`: reference.bin, schema.json, open.bin + open.json, windows/<start>.{bin,json}."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _dir(self, model: str, variant: str) -> Path:
        return self.folder / model.replace("/", "_") / variant

    def save_reference(self, stream: Stream) -> None:
        folder = self._dir(stream.model, stream.variant)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "reference.bin", stream.reference)
        _atomic_write(folder / "schema.json", json.dumps({"model": stream.model, "variant": stream.variant,
                                                          **stream.schema.model_dump()}).encode())

    def save_open(self, stream: Stream) -> None:
        folder = self._dir(stream.model, stream.variant)
        if stream.profile is None:
            (folder / "open.json").unlink(missing_ok=True)
            return
        _atomic_write(folder / "open.bin", stream.profile)
        _atomic_write(folder / "open.json", json.dumps({"window_start": stream.window_start,
                                                        "rows": stream.rows}).encode())

    def save_window(self, stream: Stream, end: float, report: dict) -> None:
        folder = self._dir(stream.model, stream.variant) / "windows"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{int(stream.window_start)}"
        _atomic_write(folder / f"{name}.bin", stream.profile)
        _atomic_write(folder / f"{name}.json", json.dumps({"window_start": stream.window_start, "window_end": end,
                                                           **report}).encode())

    def load(self) -> dict[tuple[str, str], Stream]:
        streams = {}
        for schema_file in self.folder.glob("*/*/schema.json"):
            folder, schema = schema_file.parent, json.loads(schema_file.read_text())
            model, variant = schema.pop("model"), schema.pop("variant")
            stream = Stream(model, variant, (folder / "reference.bin").read_bytes(), StreamSchema(**schema))
            if (folder / "open.json").exists():
                state = json.loads((folder / "open.json").read_text())
                stream.window_start, stream.rows = state["window_start"], state["rows"]
                stream.profile = (folder / "open.bin").read_bytes()
            streams[(model, variant)] = stream
        return streams

    def _window_files(self, model: str, variant: str) -> list[Path]:
        """Closed windows' reports, oldest first."""
        folder = self._dir(model, variant) / "windows"
        return sorted(folder.glob("*.json"), key=lambda p: int(p.stem)) if folder.exists() else []

    def last_window(self, model: str, variant: str) -> dict | None:
        files = self._window_files(model, variant)
        return json.loads(files[-1].read_text()) if files else None

    def windows(self, model: str, variant: str) -> list[dict]:
        return [json.loads(p.read_text()) for p in self._window_files(model, variant)]


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
class DriftMonitor:
    """Receives `merge(model, variant, profile)` from variants; closes windows on a clock."""

    def __init__(self, folder: str, settings: MonitorConfig | None = None):
        self.settings = settings or MonitorConfig()
        self.store = WindowStore(Path(folder))
        self.streams = self.store.load()
        self.exporter = DriftExporter()
        self.live: set[tuple[str, str]] = set()  # streams registered or merged since this replica started
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task | None = None
        logger.info("drift monitor: %d stream(s) resumed from %s", len(self.streams), folder)

    def _start_clock(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.window_s / 4))
            try:
                await self.close_due()
            except Exception:
                logger.exception("drift monitor: closing windows failed")

    async def register(self, model: str, variant: str, reference: bytes, schema: StreamSchema) -> None:
        """A variant announces itself with its bundle's reference profile and feature schema."""
        self._start_clock()
        async with self._lock:
            stream = self.streams.setdefault((model, variant), Stream(model, variant, reference, schema))
            stream.reference, stream.schema = reference, schema  # a redeployed variant may bring a new model
            await asyncio.to_thread(self.store.save_reference, stream)
            await self._went_live(stream)

    async def merge(self, model: str, variant: str, profile: bytes, rows: int, at: float | None = None) -> None:
        """Add a batch profile to the window that holds `at` (default: now)."""
        self._start_clock()
        start = (at or time.time()) // self.settings.window_s * self.settings.window_s
        async with self._lock:
            stream = self.streams.get((model, variant))
            if stream is None:
                raise LookupError(f"{model}/{variant} merged a profile before registering")
            await self._went_live(stream)
            if stream.window_start is not None and stream.window_start != start and stream.profile is not None:
                await self._close(stream)
            stream.window_start = start
            stream.profile = await asyncio.to_thread(merge_profiles, stream.profile, profile)
            stream.rows += rows
            await asyncio.to_thread(self.store.save_open, stream)

    async def _went_live(self, stream: Stream) -> None:
        """A stream's gauges are exported from its first sign of life in this replica: its last closed window
        (from disk, after a restart) until the next one closes. Streams on disk that never come back (a variant
        removed from the app) are not exported, so their series end and `DriftMonitorStale` reports them."""
        key = (stream.model, stream.variant)
        if key in self.live:
            return
        self.live.add(key)
        last = await asyncio.to_thread(self.store.last_window, stream.model, stream.variant)
        if last is not None:
            self.exporter.export(stream.model, stream.variant, DriftReport.from_dict(last), last["window_end"],
                                 self.settings.window_s)

    async def close_due(self, now: float | None = None) -> int:
        """Close every open window whose time is up; returns how many closed."""
        now = now or time.time()
        closed = 0
        async with self._lock:
            for stream in self.streams.values():
                if stream.profile is not None and now >= stream.window_start + self.settings.window_s:
                    await self._close(stream)
                    closed += 1
        return closed

    async def _close(self, stream: Stream) -> None:
        end = stream.window_start + self.settings.window_s
        schema = stream.schema
        report = await asyncio.to_thread(compare_profiles, stream.reference, stream.profile, schema.numeric,
                                         schema.categorical, self.settings, schema.label, schema.regression)
        self.exporter.export(stream.model, stream.variant, report, end, self.settings.window_s)
        await asyncio.to_thread(self.store.save_window, stream, end, report.to_dict())
        if report.drifted:
            logger.warning("drift: %s/%s window ending %s: %s", stream.model, stream.variant, end, report.drifted)
        stream.profile, stream.rows = None, 0
        await asyncio.to_thread(self.store.save_open, stream)

    async def status(self) -> dict:
        """Open windows and the closed windows on disk, per model variant."""
        return {f"{m}/{v}": {"window_start": s.window_start, "open_rows": s.rows,
                             "closed": self.store.windows(m, v)} for (m, v), s in self.streams.items()}
