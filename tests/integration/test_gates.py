"""Gates and promotion on real registered models: reject worse, promote better, audit both, roll back."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from ray_app.cli import main
from ray_app.config import ExitCode
from ray_app.data.sources import synthetic_frame
from ray_app.incidents import read_audit
from ray_app.pipeline import gate_and_promote, run_gate, run_training
from ray_app.registry import ModelRegistry
from tests.conftest import small_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "gate-test"


def gate_config():
    return small_config(
        registry={"model_name": NAME, "experiment": NAME},
        gate={"floors": {"roc_auc": 0.6}, "bootstrap_samples": 500,
              "monotonic": [{"feature": "x0", "direction": "increasing"}],
              "invariance": [{"feature": "channel", "max_changed": 0.25}],
              "slices": [{"feature": "segment", "value": "a", "metric": "accuracy", "min": 0.5}]},
    )


@pytest.fixture(scope="module")
def versions(paths, tmp_path_factory):
    """v1 mediocre (2 slow epochs), v2 worse (1 epoch on 80% random labels), v3 good (8 epochs)."""
    cfg = gate_config()
    corrupted = synthetic_frame(2000, seed=0)
    rng = np.random.default_rng(1)
    noisy = rng.random(len(corrupted)) < 0.8
    corrupted.loc[noisy, "label"] = rng.integers(0, 2, noisy.sum())
    source = tmp_path_factory.mktemp("corrupted") / "corrupted.parquet"
    corrupted.to_parquet(source, index=False)
    v1 = run_training(cfg.with_overrides(train={"epochs": 2, "lr": 0.0005, "batch_size": 64}), paths)
    v2 = run_training(cfg.with_overrides(data={"source": str(source), "label": "label"},
                                         train={"epochs": 1, "lr": 0.0005, "batch_size": 64}), paths)
    v3 = run_training(cfg.with_overrides(train={"epochs": 8}), paths)
    return v1.model, v2.model, v3.model


def test_promotion_lifecycle(versions, paths):
    v1, v2, v3 = versions
    cfg, registry = gate_config(), ModelRegistry(paths.tracking_uri)
    audit_before = len(read_audit(paths.audit_log))

    report, code = gate_and_promote(cfg, paths, v1.uri)  # no champion yet: the floors decide
    assert code == ExitCode.OK, report.render()
    assert report.champion is None and registry.alias_version(NAME, "champion") == v1.version

    report, code = gate_and_promote(cfg, paths, v2.uri)
    assert code == ExitCode.REJECTED, report.render()
    assert not next(c for c in report.checks if c.name.startswith("better than champion")).passed
    assert registry.alias_version(NAME, "champion") == v1.version

    report, code = gate_and_promote(cfg, paths, v3.uri)
    assert code == ExitCode.OK, report.render()
    assert report.figures["gain_ci_low"] > 0
    assert {c.name for c in report.checks} >= {"monotonic x0", "invariance channel", "export parity onnx",
                                               "slice segment=a accuracy", "latency p99 (1 row)"}
    assert registry.alias_version(NAME, "champion") == v3.version
    assert registry.alias_version(NAME, "previous") == v1.version

    records = read_audit(paths.audit_log)[audit_before:]
    assert [(r["action"], r["version"]) for r in records] == [
        ("promote", v1.version), ("reject", v2.version), ("promote", v3.version)]
    assert records[1]["reason"].startswith("better than champion") and records[1]["champion_before"] == v1.version
    assert records[2]["holdout_version"] == records[1]["holdout_version"]
    assert all(r["actor"] and r["time"] for r in records)
    tags = registry.client.get_model_version(NAME, v2.version).tags
    assert any(key.startswith("audit.reject.") for key in tags)
    rejected = Path(registry.client.download_artifacts(v2.run_id, "gate_report.md", str(paths.home / "v2-gate")))
    text = rejected.read_text()  # the challenger's run keeps the report: figures side by side, every check
    assert text.startswith("# Model gate: REJECT") and f"against {v1.uri}" in text
    roc = next(line for line in text.splitlines() if line.startswith("| roc_auc |"))
    assert roc.count("0.") == 2, roc  # the challenger's and the champion's
    assert "| better than champion (roc_auc) | NO |" in text and "| monotonic x0 | ok |" in text

    spec = _write_spec(cfg, paths.home / "gate-spec.yaml")
    assert main(["rollback", "--spec", str(spec), "--reason", "test"]) == 0
    assert registry.alias_version(NAME, "champion") == v1.version
    last = read_audit(paths.audit_log)[-1]
    assert (last["action"], last["version"], last["demoted"], last["reason"]) == ("rollback", v1.version,
                                                                                  v3.version, "test")


def _write_spec(cfg, path):
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_cli_exit_codes_and_exports(versions, paths, tmp_path):
    v1, v2, v3 = versions
    spec = str(_write_spec(gate_config(), tmp_path / "spec.yaml"))
    assert main(["gate", "--spec", spec, "--challenger", v2.uri, "--no-promote"]) == ExitCode.REJECTED
    assert main(["gate", "--spec", spec, "--challenger", f"models:/{NAME}/999"]) == ExitCode.ERROR
    assert main(["gate", "--spec", spec, "--challenger", "not-a-uri"]) == ExitCode.ERROR
    wrong_way = gate_config().with_overrides(gate={"monotonic": [{"feature": "x0", "direction": "decreasing"}]})
    report, _ = run_gate(wrong_way, paths, v3.uri)
    assert not report.passed and report.reason.startswith("monotonic x0")

    assert main(["validate", "--spec", spec]) == 0
    bad = synthetic_frame(400, seed=9).drop(columns=["x3"])
    bad.loc[:40, "x0"] = np.nan
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    assert main(["validate", "--spec", spec, "--data", str(tmp_path / "bad.parquet")]) == ExitCode.REJECTED

    for fmt, filename in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        assert main(["export", "--spec", spec, "--model-uri", v1.uri, "--format", fmt,
                     "--output", str(tmp_path / fmt)]) == 0
        assert (tmp_path / fmt / filename).exists() and (tmp_path / fmt / "preprocessor.bin").exists()
    tags = ModelRegistry(paths.tracking_uri).client.get_model_version(NAME, v1.version).tags
    assert tags["export.onnx"].startswith("parity") and tags["export.torchscript"].startswith("parity")
