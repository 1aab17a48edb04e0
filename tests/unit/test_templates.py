"""Shipped YAML that users run elsewhere: it parses, and every `ray-app` stage it names exists."""

import re
from pathlib import Path

import yaml

from ray_app.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _stages() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_ci_template_parses_and_names_real_stages():
    text = (ROOT / ".github" / "workflows" / "ml-pipeline.yml").read_text()
    workflow = yaml.safe_load(text)
    assert {"test", "data-gate", "pipeline", "deploy"} <= set(workflow["jobs"])
    named = set(re.findall(r"ray-app (\w+)", text))
    assert named and named <= _stages(), named - _stages()


def test_serve_configs_name_real_builders():
    import importlib

    for config in sorted((ROOT / "serve_configs").glob("*.yaml")):
        for app in yaml.safe_load(config.read_text())["applications"]:
            module, _, attr = app["import_path"].partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), config
