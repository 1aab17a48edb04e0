"""The variant's LiveProfiler: what it costs the request path."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_whylogs_is_loaded_when_the_profiler_is_warmed_not_at_its_first_flush():
    """The first flush imported whylogs in the replica mid-traffic (a ~1 s stall of the requests in flight);
    `warm()`, called when a variant loads its model, takes that cost and leaves nothing buffered or sent."""
    code = textwrap.dedent("""
        import sys
        from ray_app.config import MonitorConfig
        from ray_app.monitor.drift import StreamSchema
        from ray_app.monitor.live import LiveProfiler

        class NoMonitor:
            def __getattr__(self, name):
                raise AssertionError(f"warm() called the monitor ({name})")

        for regression in (False, True):
            schema = StreamSchema(numeric=["x0", "x1"], categorical=["segment"], regression=regression)
            profiler = LiveProfiler(NoMonitor(), "m", "v", b"", schema, MonitorConfig())
            assert "whylogs" not in sys.modules or regression, "imported before warm()"
            profiler.warm()
            assert "whylogs" in sys.modules
            assert profiler.pending == [] and profiler.rows == 0 and profiler.task is None
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-3000:]
