"""Prometheus rules, Alertmanager config and Grafana dashboards: they parse, their tests pass (and fail when a rule
is broken), and every metric they name is one the code emits."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import tool

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "cluster" / "prometheus"
DASHBOARDS = sorted((ROOT / "cluster" / "grafana" / "dashboards").glob("*.json"))
# Ray's own Serve metric that the serving dashboard also shows (seen on a Ray 2.60 scrape).
RAY_BUILTIN = {"ray_serve_num_http_requests_total"}


def promtool(*args: str, cwd: Path = PROM / "rules") -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rule_unit_tests_pass():
    done = promtool("test", "rules", "drift.test.yml", "serving.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("rule_file", "before", "after"), [
    ("drift.yml", "ray_app:drift_effect_size:max >= 0.1", "ray_app:drift_effect_size:max >= 0.5"),
    ("drift.yml", "for: 10m", "for: 1m"),
    # a drifted window held after traffic stopped must not count as consecutive windows
    ("drift.yml", "and on (model, variant) ray_app:drift_window_end:max > time() - 2 * "
     "ray_app:drift_window_seconds:max", ""),
    # a dead monitor's gauges vanish: staleness must come from history, not from the live series
    ("drift.yml", "max_over_time(ray_drift_window_end_timestamp_seconds[1d])",
     "ray_drift_window_end_timestamp_seconds"),
    ("serving.yml", "ray_app:ab_error_ratio:rate1m > 0.05", "ray_app:ab_error_ratio:rate1m > 0.5"),
])
def test_rule_unit_tests_fail_when_a_rule_is_broken(tmp_path, rule_file, before, after):
    for path in (PROM / "rules").glob("*.yml"):
        shutil.copy(path, tmp_path)
    text = (tmp_path / rule_file).read_text()
    assert before in text
    (tmp_path / rule_file).write_text(text.replace(before, after))
    done = promtool("test", "rules", "drift.test.yml", "serving.test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


def test_prometheus_and_alertmanager_configs_are_valid(tmp_path):
    done = promtool("check", "config", "prometheus.yml", cwd=PROM)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copy(ROOT / "cluster" / "alertmanager" / "alertmanager.yml", tmp_path)
    (tmp_path / "webhook_token").write_text("token")
    checked = subprocess.run([tool("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def dashboard_exprs() -> list[tuple[str, str]]:
    exprs = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        exprs += [(path.name, t["expr"]) for p in board["panels"] for t in p["targets"]]
        exprs += [(path.name, v["query"]["query"]) for v in board["templating"]["list"]]
        exprs += [(path.name, a["expr"]) for a in board.get("annotations", {}).get("list", [])]
    return exprs


def grafana_to_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "1m")
    if expr.startswith("label_values("):  # a Grafana variable query: its first argument is the selector
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    return re.sub(r"\$\w+", "x", expr)


def test_every_dashboard_expression_parses(tmp_path):
    assert {p.stem for p in DASHBOARDS} == {"serving", "ab", "drift", "training"}
    rules = [{"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)} for i, (_, e) in
             enumerate(dashboard_exprs())]
    (tmp_path / "exprs.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = promtool("check", "rules", "exprs.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def emitted_metrics() -> set[str]:
    """The names Prometheus gets from our code: Ray prefixes `ray_`; counters gain `_total`, histograms
    `_bucket`/`_sum`/`_count`."""
    names = set()
    for path in (ROOT / "ray_app").rglob("*.py"):
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"([a-z0-9_]+)\"", path.read_text()):
            base = f"ray_{name}"
            names |= {"Counter": {f"{base}_total"}, "Gauge": {base},
                      "Histogram": {f"{base}_bucket", f"{base}_sum", f"{base}_count"}}[kind]
    return names


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(ray_[a-z0-9_]+)\b(?!:)", expr))


def rule_files() -> list[Path]:
    return [p for p in (PROM / "rules").glob("*.yml") if not p.name.endswith(".test.yml")]


def recorded_rules() -> set[str]:
    return {r["record"] for path in rule_files()
            for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "record" in r}


def test_every_metric_in_dashboards_and_rules_is_emitted():
    emitted, recorded = emitted_metrics() | RAY_BUILTIN, recorded_rules()
    assert {"ray_ab_requests_total", "ray_drift_detected", "ray_train_epoch"} <= emitted
    assert {p.name for p in rule_files()} == {"drift.yml", "serving.yml"}
    rules = [r["expr"] for path in rule_files()
             for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    for where, expr in [("rules", e) for e in rules] + dashboard_exprs():
        missing = named_metrics(expr) - emitted
        assert not missing, f"{where}: {expr} names metrics nothing emits: {missing}"
        unknown = set(re.findall(r"\b(ray_app:[a-z0-9_:]+)", expr)) - recorded
        assert not unknown, f"{where}: unknown recording rule(s) {unknown}"
