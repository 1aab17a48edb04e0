"""Where an ABRouter's weights are set (Serve's REST API, the router's admin route, or a KubeRay RayService) and,
through the first and the last, which model version each variant serves."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import yaml

from ray_app.config import ConfigError, RolloutConfig, RuntimePaths


class WeightSetter(Protocol):
    def __call__(self, weights: dict[str, float]) -> None: ...


ModelSwapper = Callable[[str, str], None]  # (variant, model URI): that variant serves that model from now on


def variant_deployment(variant: str) -> str:
    """The Serve deployment name of an A/B app's variant (`ray_app.serve.app.variant_app`)."""
    return f"variant-{variant}"


def set_user_config(applications: list[dict], app: str, deployment: str, **fields) -> None:
    """Merge `fields` into a deployment's `user_config` of `app` in a Serve config's applications, in place."""
    config = next((c for c in applications if c["name"] == app), None)
    if config is None:
        raise RuntimeError(f"no Serve application {app!r} in the config (there are: "
                           f"{', '.join(c['name'] for c in applications) or 'none'})")
    entry = next((d for d in config.get("deployments", []) if d["name"] == deployment), None)
    if entry is None:
        entry = {"name": deployment}
        config.setdefault("deployments", []).append(entry)
    entry["user_config"] = {**(entry.get("user_config") or {}), **fields}


class ServeConfigWeights:
    """Edits `user_config`s in the live declarative Serve config and redeploys it, as `serve deploy` would:
    durable across replica restarts. Called with weights, it sets the router's (reconfigured in place); with
    `serve_model`, a variant's model (Serve 2.60 rolls that variant's replicas)."""

    def __init__(self, dashboard_url: str, app: str, deployment: str, ready_timeout_s: float = 120.0):
        self.dashboard_url, self.app, self.deployment = dashboard_url, app, deployment
        self.ready_timeout_s = ready_timeout_s

    def __call__(self, weights: dict[str, float]) -> None:
        self._deploy(self.deployment, weights=weights)

    def serve_model(self, variant: str, model_uri: str) -> None:
        """The variant serves `model_uri`; returns once its replicas are healthy again."""
        self._deploy(variant_deployment(variant), model_uri=model_uri)
        self._wait_healthy(variant_deployment(variant))

    def _client(self):
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        return ServeSubmissionClient(self.dashboard_url)

    def _deploy(self, deployment: str, **fields) -> None:
        client = self._client()
        details = client.get_serve_details()
        # Only declaratively deployed apps are in the config; a deploy leaves `serve.run` apps alone.
        configs = [a["deployed_app_config"] for a in details.get("applications", {}).values()
                   if a.get("deployed_app_config")]
        if self.app not in {c["name"] for c in configs}:
            raise RuntimeError(f"Serve app {self.app!r} was not deployed from a config file (serve deploy); "
                               "use rollout.target.via: admin")
        set_user_config(configs, self.app, deployment, **fields)
        http = {k: v for k, v in (details.get("http_options") or {}).items() if k in ("host", "port")}
        client.deploy_applications({"proxy_location": details.get("proxy_location", "EveryNode"),
                                    "http_options": http, "applications": configs})

    def _wait_healthy(self, deployment: str, unseen_update_s: float = 5.0) -> None:
        """Until the deployment is healthy after its update: the controller takes a config asynchronously, so a
        HEALTHY seen before any UPDATING counts only after `unseen_update_s`."""
        start = time.monotonic()
        updating = False
        while time.monotonic() - start < self.ready_timeout_s:
            app = self._client().get_serve_details().get("applications", {}).get(self.app, {})
            healthy = (app.get("status") == "RUNNING"
                       and app.get("deployments", {}).get(deployment, {}).get("status") == "HEALTHY")
            updating = updating or not healthy
            if healthy and (updating or time.monotonic() - start >= unseen_update_s):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.app}/{deployment} did not become healthy in {self.ready_timeout_s:g} s")


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
        self._patch(self.deployment, weights=weights)

    def serve_model(self, variant: str, model_uri: str) -> None:
        """The variant serves `model_uri` once KubeRay applies the change."""
        self._patch(variant_deployment(variant), model_uri=model_uri)

    def _patch(self, deployment: str, **fields) -> None:
        resource = json.loads(self._kubectl("get", "rayservice", self.name, "--output", "json"))
        config = yaml.safe_load(resource["spec"]["serveConfigV2"])
        set_user_config(config.get("applications", []), self.app, deployment, **fields)
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


def model_swapper(setter: WeightSetter) -> ModelSwapper | None:
    """How the target's variants are told which model to serve; None where only weights can be set (the admin
    route changes one router replica, not the variants)."""
    return getattr(setter, "serve_model", None)
