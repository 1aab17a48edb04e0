"""MLflow: runs with params, metrics and lineage; the ModelBundle as a registered model; aliases."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ray_app.config import RuntimePaths, UserError
from ray_app.incidents import append_audit
from ray_app.package import ModelBundle

BUNDLE_ARTIFACT = "bundle"
ALIASES = ("champion", "challenger", "previous")


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """Lets `mlflow models serve` and `mlflow.pyfunc.load_model` use a ModelBundle too."""

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self.bundle.predict(model_input)["predictions"]


@dataclass(frozen=True)
class ModelRef:
    """A registered model version."""

    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def git_sha(cwd: str | Path | None = None) -> str:
    """The commit of the code that ran, or `unknown` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` or `models:/name/version` to (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise UserError(f"expected models:/<name>@<alias> or models:/<name>/<version>, got {uri!r}")
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise UserError(f"expected models:/<name>@<alias> or models:/<name>/<version>, got {uri!r}")
    return name, None, version


class ModelRegistry:
    """One MLflow tracking store and model registry (SQLite by default), and the audit log its decisions go to."""

    def __init__(self, tracking_uri: str, artifact_root: str | None = None, audit_log: Path | None = None,
                 actor: str = "unknown"):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.audit_log, self.actor = audit_log, actor
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_paths(cls, paths: RuntimePaths) -> ModelRegistry:
        """The registry of this installation: build it once per process and pass it down."""
        return cls(paths.tracking_uri, paths.artifact_root, paths.audit_log, paths.actor)

    def _use_store(self) -> None:
        # MLflow's fluent API (log_model, download of models:/ URIs) reads the process-wide store URIs.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{self.artifact_root}/{name}" if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    def start_run(self, experiment: str, run_name: str, params: dict, tags: dict) -> str:
        """Open a run; training logs epochs into it and `finish_run` closes it."""
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        return run.info.run_id

    def finish_run(self, run_id: str, metrics: dict[str, float] | None = None, status: str = "FINISHED") -> None:
        for key, value in (metrics or {}).items():
            self.client.log_metric(run_id, key, float(value))
        self.client.set_terminated(run_id, status=status)

    def log_bundle(self, run_id: str, bundle: ModelBundle, model_name: str, example: pd.DataFrame) -> ModelRef:
        """Log the bundle as an MLflow pyfunc model with a signature, and register a new version."""
        self._use_store()
        signature = mlflow.models.infer_signature(example, pd.Series(bundle.predict(example)["predictions"]))
        with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
            bundle.save(Path(folder) / BUNDLE_ARTIFACT)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=BundlePyfunc(),
                artifacts={BUNDLE_ARTIFACT: str(Path(folder) / BUNDLE_ARTIFACT)},
                signature=signature,
                pip_requirements=["ray-app"],
                registered_model_name=model_name,
            )
        return ModelRef(model_name, str(info.registered_model_version), run_id)

    def log_files(self, run_id: str, files: dict[str, bytes | str]) -> None:
        """Log files (relative artifact path -> content) on a run."""
        with tempfile.TemporaryDirectory() as folder:
            for name, content in files.items():
                path = Path(folder) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            self.client.log_artifacts(run_id, folder)

    def epoch_history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """The run's metrics logged at more than one step (the training loop's per-epoch figures)."""
        history = {}
        for key in self.client.get_run(run_id).data.metrics:
            points = [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]
            if len(points) > 1:
                history[key] = points
        return history

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def resolve(self, uri: str) -> ModelRef:
        """The version a `models:/` URI points at now."""
        name, alias, version = parse_model_uri(uri)
        found = (self.client.get_model_version_by_alias(name, alias) if alias
                 else self.client.get_model_version(name, version))
        return ModelRef(name, str(found.version), found.run_id)

    def latest_version(self, name: str) -> ModelRef:
        versions = self.client.search_model_versions(f"name='{name}'")
        if not versions:
            raise LookupError(f"no registered versions of model {name!r}")
        newest = max(versions, key=lambda v: int(v.version))
        return ModelRef(name, str(newest.version), newest.run_id)

    def load_bundle(self, uri: str) -> tuple[ModelBundle, ModelRef]:
        """Download a registered model and load its ModelBundle."""
        ref = self.resolve(uri)
        self._use_store()
        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=folder,
                                                        tracking_uri=self.tracking_uri)
            return ModelBundle.load(Path(local) / "artifacts" / BUNDLE_ARTIFACT), ref

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None when the alias (or the model) does not exist."""
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def promote(self, name: str, version: str) -> str | None:
        """`champion` moves to `version`; the old champion keeps `previous` for rollback. Returns the old one."""
        previous = self.alias_version(name, "champion")
        if previous is not None and previous != version:
            self.client.set_registered_model_alias(name, "previous", previous)
        self.client.set_registered_model_alias(name, "champion", version)
        if self.alias_version(name, "challenger") == version:
            self.client.delete_registered_model_alias(name, "challenger")
        return previous

    def rollback(self, name: str) -> tuple[str, str]:
        """`champion` goes back to `previous`; returns (demoted version, restored version)."""
        current, previous = self.alias_version(name, "champion"), self.alias_version(name, "previous")
        if current is None or previous is None:
            raise LookupError(f"model {name!r} has no champion and previous aliases to roll back between")
        self.client.set_registered_model_alias(name, "champion", previous)
        self.client.delete_registered_model_alias(name, "previous")
        return current, previous

    def log_export(self, ref: ModelRef, folder: str | Path, fmt: str, parity: float) -> None:
        """Keep an exported model on its version's run, and tag the version with the parity it reached."""
        if ref.run_id:
            self.client.log_artifacts(ref.run_id, str(folder), artifact_path=f"exports/v{ref.version}/{fmt}")
        self.client.set_model_version_tag(ref.name, ref.version, f"export.{fmt}", f"parity {parity:.2e}")

    def record_decision(self, action: str, name: str, version: str | None, reason: str, **details) -> dict:
        """The one path for decisions: move the aliases the action implies, then append the audit record.

        `promote` and `rollout-promote` make `version` the champion (the old one becomes `previous`); `reject` and
        `rollout-rollback` move nothing; `rollback` puts `champion` back on `previous` (`version` is ignored).
        `details` (figures, checks, steps, ...) go into the record as they are."""
        if action in ("promote", "rollout-promote"):
            champion_before, promoted = self.promote(name, version), True
        elif action in ("reject", "rollout-rollback"):
            champion_before, promoted = self.alias_version(name, "champion"), False
        elif action == "rollback":
            champion_before, version = self.rollback(name)
            promoted, details = True, {"demoted": champion_before, **details}
        else:
            raise ValueError(f"unknown decision {action!r}")  # a bug in the caller, not a user's mistake
        if self.audit_log is None:
            raise ValueError("this registry has no audit log: build it with ModelRegistry.from_paths")  # a bug
        return self.record_audit(name, version, {"action": action, "actor": self.actor, "decision": promoted,
                                                 "reason": reason, "champion_before": champion_before, **details},
                                 self.audit_log)

    def record_audit(self, name: str, version: str, record: dict, log_path: Path) -> dict:
        """Append the record to the JSONL audit log and tag it on the model version and the model."""
        record = append_audit(log_path, {"model": name, "version": version, **record})
        payload = json.dumps(record, default=str)[:5000]
        self.client.set_model_version_tag(name, version, f"audit.{record['action']}.{int(time.time() * 1000)}",
                                          payload)
        self.client.set_registered_model_tag(name, "audit.last", payload)
        return record

