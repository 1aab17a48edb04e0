# Not named test_monitor.py: `ray stop --force` kills every process whose command line contains "monitor.py".
"""Live monitoring on Serve: variants profile what they serve, the DriftMonitor keeps windows on disk."""

import httpx
import pytest
import ray
from ray import serve
from ray.util.state import list_actors

from ray_app.config import MonitorConfig
from ray_app.serve.app import VariantArgs, monitor_app, variant_app
from ray_app.serve.variant import BundleDirLoader
from tests.conftest import SERVE_PORT, wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def bundle_dir(champion, paths, tmp_path_factory):
    from ray_app.registry import ModelRegistry

    bundle, _ = ModelRegistry(paths.tracking_uri).load_bundle(champion.model.uri)
    return bundle.save(tmp_path_factory.mktemp("monitored") / "bundle"), bundle


def _monitor_status(app: str) -> dict:
    return serve.get_deployment_handle("DriftMonitor", app).status.remote().result()


def test_window_profiles_survive_a_monitor_replica_restart(bundle_dir, tmp_path):
    import pandas as pd

    folder, bundle = bundle_dir
    settings = MonitorConfig(window_s=3600, flush_rows=10, flush_s=0.5)
    app = variant_app(VariantArgs(model_uri=str(folder), variant="solo", monitor=settings), loader=BundleDirLoader(),
                      monitor=monitor_app(settings, str(tmp_path / "monitor")))
    serve.run(app, name="monitored", route_prefix="/monitored")
    rows = pd.read_parquet(bundle.dataset_version["files"][0])[bundle.schema.features].head(100)
    url = f"http://127.0.0.1:{SERVE_PORT}/monitored"
    try:
        for i in range(60):
            assert httpx.post(url, json={"instances": [rows.iloc[i].to_dict()]}, timeout=30).status_code == 200

        def open_rows() -> int:
            return sum(s["open_rows"] for s in _monitor_status("monitored").values())

        wait_until(lambda: open_rows() == 60, timeout=60, what="60 rows in the open window")
        [replica] = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "DriftMonitor" in a.class_name]
        ray.kill(ray.get_actor(replica.name, namespace="serve"), no_restart=True)
        wait_until(lambda: _alive_monitor(replica.actor_id), timeout=120, what="a new monitor replica")
        wait_until(lambda: open_rows() == 60, timeout=60, what="the open window back from disk")
        for i in range(60, 100):
            assert httpx.post(url, json={"instances": [rows.iloc[i].to_dict()]}, timeout=30).status_code == 200
        wait_until(lambda: open_rows() == 100, timeout=60, what="100 rows in the resumed window")
        [stream] = _monitor_status("monitored").values()
        assert stream["closed"] == []
    finally:
        serve.delete("monitored")
    assert (tmp_path / "monitor").glob("*/solo/open.bin")


def _alive_monitor(old_id: str) -> bool:
    try:
        return any("DriftMonitor" in a.class_name and a.actor_id != old_id
                   for a in list_actors(filters=[("state", "=", "ALIVE")]))
    except Exception:
        return False


def test_closed_windows_are_judged_and_kept(bundle_dir, tmp_path):
    import pandas as pd

    folder, bundle = bundle_dir
    settings = MonitorConfig(window_s=2, flush_rows=50, flush_s=0.3, min_rows=100)
    app = variant_app(VariantArgs(model_uri=str(folder), variant="short", monitor=settings), loader=BundleDirLoader(),
                      monitor=monitor_app(settings, str(tmp_path / "monitor")))
    serve.run(app, name="windows", route_prefix="/windows")
    data = pd.read_parquet(bundle.dataset_version["files"][0])[bundle.schema.features].head(400)
    shifted = data.assign(x0=data["x0"] + 3 * data["x0"].std())
    url = f"http://127.0.0.1:{SERVE_PORT}/windows"

    def closed() -> list:
        return next(iter(_monitor_status("windows").values()))["closed"]

    phases = []
    try:
        for frame in (data, shifted):
            for start in range(0, 400, 50):
                chunk = frame.iloc[start:start + 50].to_dict(orient="records")
                assert httpx.post(url, json={"instances": chunk}, timeout=30).status_code == 200
            rows = 400 * (len(phases) + 1)
            phases.append(wait_until(lambda rows=rows: (w := closed()) and sum(x["rows"] for x in w) == rows and w,
                                     timeout=60, what=f"{rows} rows in closed windows"))
    finally:
        serve.delete("windows")
    before, after = phases[0], phases[1][len(phases[0]):]
    assert all("x0" not in w["drifted"] for w in before)
    judged = [w for w in after if w["judged"]]
    assert judged and all("x0" in w["drifted"] for w in judged), after
    assert "prediction" in {f["feature"] for f in judged[0]["features"]}
