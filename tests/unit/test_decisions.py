"""`record_decision`: the one path by which promotions, rejections, rollbacks and rollout outcomes move aliases
and reach the audit log. A real MLflow registry (SQLite in a temporary folder), no Ray."""

import pytest

from ray_app.config import RuntimePaths
from ray_app.incidents import read_audit
from ray_app.registry import ModelRegistry


@pytest.fixture
def registry(tmp_path):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path), "RAY_APP_ACTOR": "tester"}).ensure()
    registry = ModelRegistry.from_paths(paths)
    registry.client.create_registered_model("m")
    for _ in range(3):
        registry.client.create_model_version("m", source=str(tmp_path))
    return registry


def test_decisions_move_aliases_and_are_audited(registry):
    registry.record_decision("promote", "m", "1", "first", figures={"auc": 0.8})
    registry.record_decision("reject", "m", "2", "worse")
    registry.record_decision("promote", "m", "3", "better")
    assert (registry.alias_version("m", "champion"), registry.alias_version("m", "previous")) == ("3", "1")
    registry.record_decision("rollout-rollback", "m", "2", "errors at 5%", steps=[{"percent": 5}])
    assert registry.alias_version("m", "champion") == "3"
    back = registry.record_decision("rollback", "m", None, "operator")
    assert registry.alias_version("m", "champion") == "1" and registry.alias_version("m", "previous") is None

    records = read_audit(registry.audit_log)
    assert [(r["action"], r["version"], r["decision"], r["champion_before"]) for r in records] == [
        ("promote", "1", True, None), ("reject", "2", False, "1"), ("promote", "3", True, "1"),
        ("rollout-rollback", "2", False, "3"), ("rollback", "1", True, "3")]
    assert records[0]["figures"] == {"auc": 0.8} and records[3]["steps"] == [{"percent": 5}]
    assert back["demoted"] == "3" and all(r["actor"] == "tester" and r["model"] == "m" for r in records)
    assert registry.client.get_registered_model("m").tags["audit.last"].startswith('{"time"')


def test_an_unknown_decision_moves_nothing(registry):
    with pytest.raises(ValueError, match="unknown decision 'demote'"):
        registry.record_decision("demote", "m", "1", "?")
    assert registry.alias_version("m", "champion") is None and read_audit(registry.audit_log) == []
