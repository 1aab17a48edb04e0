"""The alerting half of the loop on loopback, as the end-to-end tests run it: a real Prometheus with the shipped
drift rules (their `for` scaled down), a real Alertmanager with the shipped route, and the retrain webhook."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from ray_app.loop import RetrainWebhook, webhook_app
from tests.conftest import (
    ADMIN_TOKEN,
    ROOT,
    free_port,
    start_prometheus,
    start_service,
    stop_service,
    tool,
    wait_until,
)


@contextmanager
def alert_stack(ray_cluster: dict, folder: Path, webhook: RetrainWebhook, alert_for: str = "4s"):
    """Prometheus (shipped drift rules, `for: 10m` -> `alert_for`; the serving rules as shipped, whose recorded
    series the dashboards read) -> Alertmanager (shipped route, re-sending every few seconds) -> `webhook` served
    on loopback. Yields {"prometheus": url, "calls": [...]}, one entry per request that reached `/alerts`."""
    import uvicorn

    am_port, hook_port = free_port(), free_port()
    rules = (ROOT / "cluster" / "prometheus" / "rules" / "drift.yml").read_text().replace("for: 10m",
                                                                                           f"for: {alert_for}")
    (folder / "drift.yml").write_text(rules)
    am = yaml.safe_load((ROOT / "cluster" / "alertmanager" / "alertmanager.yml").read_text())
    am["route"].update(group_wait="1s", group_interval="2s", repeat_interval="3s")  # re-sends, to be de-duplicated
    am["receivers"][1]["webhook_configs"][0]["url"] = f"http://127.0.0.1:{hook_port}/alerts"
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(am))
    (folder / "webhook_token").write_text(ADMIN_TOKEN)

    calls: list[int] = []
    app = webhook_app(webhook, ADMIN_TOKEN)

    async def counting(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/alerts":
            calls.append(1)
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(counting, host="127.0.0.1", port=hook_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    am_proc = prom_proc = None
    try:
        wait_until(lambda: up(f"http://127.0.0.1:{hook_port}/healthz"), 30, what="the webhook")
        am_proc = start_service([tool("prometheus-alertmanager"), f"--config.file={folder / 'alertmanager.yml'}",
                                 f"--storage.path={folder / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                                 "--cluster.listen-address="], f"http://127.0.0.1:{am_port}/-/ready",
                                folder / "alertmanager.log")
        prom_url, prom_proc = start_prometheus(
            folder, ray_cluster["metrics"],
            rule_files=[str(folder / "drift.yml"), str(ROOT / "cluster" / "prometheus" / "rules" / "serving.yml")],
            alerting={"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]})
        yield {"prometheus": prom_url, "calls": calls}
    finally:
        for proc in (prom_proc, am_proc):
            if proc is not None:
                stop_service(proc)
        server.should_exit = True
        thread.join(timeout=30)


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def drift_alerts(prometheus: str, state: str) -> list[dict]:
    """FeatureDriftPersistent alerts in `state` (pending or firing), as Prometheus's API lists them."""
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "FeatureDriftPersistent" and a["state"] == state]
