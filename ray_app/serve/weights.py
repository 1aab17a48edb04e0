"""Where an ABRouter's weights are set: Serve's REST API, the router's admin route, or a KubeRay RayService."""

from __future__ import annotations

import json
import subprocess
from typing import Protocol

import httpx
import yaml

from ray_app.config import ConfigError, RolloutConfig, RuntimePaths


class WeightSetter(Protocol):
    def __call__(self, weights: dict[str, float]) -> None: ...


def set_router_weights(applications: list[dict], app: str, deployment: str, weights: dict[str, float]) -> None:
    """Put `weights` into the router's `user_config` of `app` in a Serve config's applications, in place."""
    config = next((c for c in applications if c["name"] == app), None)
    if config is None:
        raise RuntimeError(f"no Serve application {app!r} in the config (there are: "
                           f"{', '.join(c['name'] for c in applications) or 'none'})")
    router = next((d for d in config.get("deployments", []) if d["name"] == deployment), None)
    if router is None:
        router = {"name": deployment}
        config.setdefault("deployments", []).append(router)
    router["user_config"] = {**(router.get("user_config") or {}), "weights": weights}


class ServeConfigWeights:
    """Edits the router's `user_config` in the live declarative Serve config and redeploys it, as `serve deploy`
    would: durable across replica restarts, reconfigured in place."""

    def __init__(self, dashboard_url: str, app: str, deployment: str):
        self.dashboard_url, self.app, self.deployment = dashboard_url, app, deployment

    def __call__(self, weights: dict[str, float]) -> None:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        client = ServeSubmissionClient(self.dashboard_url)
        details = client.get_serve_details()
        # Only declaratively deployed apps are in the config; a deploy leaves `serve.run` apps alone.
        configs = [a["deployed_app_config"] for a in details.get("applications", {}).values()
                   if a.get("deployed_app_config")]
        if self.app not in {c["name"] for c in configs}:
            raise RuntimeError(f"Serve app {self.app!r} was not deployed from a config file (serve deploy); "
                               "use rollout.target.via: admin")
        set_router_weights(configs, self.app, self.deployment, weights)
        http = {k: v for k, v in (details.get("http_options") or {}).items() if k in ("host", "port")}
        client.deploy_applications({"proxy_location": details.get("proxy_location", "EveryNode"),
                                    "http_options": http, "applications": configs})


class AdminRouteWeights:
    """Sets weights through the router's `POST /admin/weights` (bearer token): immediate, but per replica and
    replaced by the next `serve deploy`."""

    def __init__(self, url: str, token: str | None):
        if not token:
            raise ConfigError("target.via: admin needs RAY_APP_ADMIN_TOKEN")
        self.url, self.token = url, token

    def __call__(self, weights: dict[str, float]) -> None:
        response = httpx.post(self.url, json={"weights": weights}, timeout=30,
                              headers={"Authorization": f"Bearer {self.token}"})
        if response.status_code != 200:
            raise RuntimeError(f"router refused weights {weights}: {response.status_code} {response.text[:200]}")


class RayServiceWeights:
    """Edits the weights in a KubeRay RayService's `serveConfigV2` with `kubectl`. KubeRay applies a Serve config
    change to the running cluster in place, and the resource itself now holds the weights, so the operator never
    puts older ones back (as it would after a change made through Serve's REST API)."""

    def __init__(self, name: str, namespace: str | None, app: str, deployment: str, kubectl: str = "kubectl"):
        self.name, self.app, self.deployment = name, app, deployment
        self.base = [kubectl, *(["--namespace", namespace] if namespace else [])]

    def _kubectl(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {args[0]} rayservice/{self.name} failed: {done.stderr.strip()[:500]}")
        return done.stdout

    def __call__(self, weights: dict[str, float]) -> None:
        resource = json.loads(self._kubectl("get", "rayservice", self.name, "--output", "json"))
        config = yaml.safe_load(resource["spec"]["serveConfigV2"])
        set_router_weights(config.get("applications", []), self.app, self.deployment, weights)
        # resourceVersion makes the patch fail, rather than overwrite, if someone changed the resource meanwhile
        patch = {"metadata": {"resourceVersion": resource["metadata"]["resourceVersion"]},
                 "spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False)}}
        self._kubectl("patch", "rayservice", self.name, "--type", "merge", "--patch", json.dumps(patch))


def weight_setter(spec: RolloutConfig, paths: RuntimePaths) -> WeightSetter:
    target = spec.target
    if target.via == "admin":
        return AdminRouteWeights(target.admin_url, paths.admin_token)
    if target.via == "rayservice":
        return RayServiceWeights(target.rayservice, target.namespace, target.app, target.deployment)
    return ServeConfigWeights(paths.dashboard_url, target.app, target.deployment)
