"""Gauges that describe a state (the last drift window, a router's weights, a run's last epoch) and must stay
visible while that state holds.

Ray 2.60's metrics agent evicts a gauge series that its process has not set again within two export intervals
(`metrics_report_interval_ms`, 10 s by default: ~20 s). A value set once, when a drift window closes or when
weights change, is therefore gone from Prometheus ~20 s later, and an alert with a `for` longer than that can
never fire. `HeldGauges` remembers the last value of every series it sets and sets them all again every
`interval_s` from a daemon thread, well inside the agent's shortest TTL (2 s).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

REFRESH_S = 1.0  # the agent's TTL is never under 2 s (it floors the export interval at 1 s)


class HeldGauges:
    """Sets Ray gauges (`ray.util.metrics.Gauge` or `ray.serve.metrics.Gauge`) and keeps re-setting them."""

    def __init__(self, interval_s: float = REFRESH_S):
        self.interval_s = interval_s
        self._held: dict[tuple[int, frozenset], tuple[Any, float, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, gauge: Any, value: float, tags: dict[str, str]) -> None:
        """Set now, and hold the value until it is set again or forgotten."""
        gauge.set(value, tags=tags)
        with self._lock:
            self._held[(id(gauge), frozenset(tags.items()))] = (gauge, value, dict(tags))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="held-gauges", daemon=True)
                self._thread.start()

    def forget(self, gauge: Any, tags: dict[str, str]) -> None:
        """Stop re-setting one series; the agent drops it after its TTL."""
        with self._lock:
            self._held.pop((id(gauge), frozenset(tags.items())), None)

    def held(self) -> list[tuple[float, dict[str, str]]]:
        """(value, tags) of every series held, for tests and status pages."""
        with self._lock:
            return [(value, tags) for _, value, tags in self._held.values()]

    def refresh(self) -> None:
        with self._lock:
            series = list(self._held.values())
        for gauge, value, tags in series:
            gauge.set(value, tags=tags)

    def stop(self) -> None:
        """Stop re-setting (the series age out of Prometheus after the agent's TTL)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # a metrics hiccup must never take the process down
                logger.exception("held gauges: refresh failed")
