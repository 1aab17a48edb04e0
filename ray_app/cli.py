"""`ray-app`: one subcommand per stage; each also runs as `ray job submit --working-dir . -- ray-app <stage>`.

Parsing and dispatch only: what each stage does and prints is in `commands.py`."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

import yaml

from ray_app.commands import (
    Stage,
    cmd_aliases,
    cmd_demo,
    cmd_drift,
    cmd_explain,
    cmd_export,
    cmd_gate,
    cmd_incidents,
    cmd_ingest,
    cmd_pipeline,
    cmd_predict,
    cmd_register,
    cmd_rollback,
    cmd_rollout,
    cmd_serve,
    cmd_train,
    cmd_tune,
    cmd_validate,
    cmd_webhook,
)
from ray_app.config import ConfigError, ExitCode, ExperimentConfig, RuntimePaths, UserError
from ray_app.console import log_file_for, quiet_console
from ray_app.loop import COOLDOWN_S
from ray_app.resources import WAIT_S

DEMO_PORT = 8000


def load_config(spec: str | None, overrides: list[str]) -> ExperimentConfig:
    """The spec file (or the defaults) with `--set section.field=value` overrides applied."""
    cfg = ExperimentConfig.from_yaml(spec) if spec else ExperimentConfig()
    sections: dict[str, dict] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. train.epochs=3")
        sections.setdefault(section, {})[field] = yaml.safe_load(value)
    unknown = sorted(set(sections) - set(ExperimentConfig.model_fields))
    if unknown:
        raise ConfigError(f"--set: unknown section(s) {', '.join(unknown)}")
    return cfg.with_overrides(**sections) if sections else cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name: str, func: Callable[[Stage], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--spec", help="experiment config YAML (see tuning/); defaults apply without one")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one config field, e.g. --set train.epochs=3 (repeatable)")
        p.add_argument("--local", action="store_true", help="run on a private local Ray, not the cluster in "
                                                            "RAY_ADDRESS or one started by `ray start`")
        p.add_argument("--debug", action="store_true", help="print the traceback of any error, not only of bugs")
        p.add_argument("-v", "--verbose", action="store_true", help="print Ray's, MLflow's and the workers' output "
                                                                  "here instead of in $RAY_APP_HOME/logs")
        p.set_defaults(func=func)
        return p

    def training_stage(name: str, func: Callable[[Stage], int], text: str) -> argparse.ArgumentParser:
        p = stage(name, func, text)
        p.add_argument("--wait-for-resources", type=float, default=WAIT_S, metavar="SECONDS",
                       help="how long to wait for CPUs/GPUs that others hold before giving up (exit 2); a need "
                            f"the cluster can never meet stops at once (default {WAIT_S:g})")
        return p

    p = stage("ingest", cmd_ingest, "read the data, fingerprint it, split it once into the split cache and show "
                                    "the splits")
    p.add_argument("--clear-cache", action="store_true", help="delete every cached split under RAY_APP_STORAGE "
                                                              "(they are rewritten on next use) and exit")
    p = training_stage("train", cmd_train, "train with Ray Train, log to MLflow and register a model version")
    p.add_argument("--run-name", help="Ray Train run name; re-using one resumes from its checkpoints")
    p.add_argument("--alias", help="also point this alias (e.g. challenger) at the new version")
    p = training_stage("tune", cmd_tune, "search hyperparameters (Optuna TPE + ASHA by default) and register the "
                                         "best as challenger")
    p.add_argument("--name", help="tuning run name under the storage path (default: tune-<spec name>)")
    p.add_argument("--resume", action="store_true", help="continue a stopped search; finished trials are kept")
    p = stage("register", cmd_register, "point a registry alias at a model version")
    p.add_argument("--model-name", help="registered model name (default: the spec's registry.model_name)")
    p.add_argument("--version", help="model version (default: the newest)")
    p.add_argument("--alias", required=True, help="alias to set, e.g. champion or challenger")
    p = stage("aliases", cmd_aliases, "show which versions champion, challenger and previous point at")
    p.add_argument("--model-name", help="registered model name (default: the spec's registry.model_name)")
    p = stage("predict", cmd_predict, "score a Parquet/CSV file or folder with Ray Data")
    p.add_argument("--model-uri", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--input", required=True, help="Parquet/CSV file, folder or URI")
    p.add_argument("--output", required=True, help="output folder for Parquet files")
    p.add_argument("--concurrency", type=int, default=1, help="number of scoring actors")
    p = stage("serve", cmd_serve, "serve a registered model over HTTP with Ray Serve")
    p.add_argument("--model-uri", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--port", type=int, default=DEMO_PORT)
    p.add_argument("--no-batching", action="store_true", help="predict each request alone (no @serve.batch)")
    p.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                   help="Serve's default proxy, or Ray's HAProxy ingress (faster; a private local Ray only: a "
                        "cluster's ingress is set when it starts, INGRESS=haproxy make cluster-up NODES=0)")
    p.add_argument("--detach", action="store_true", help="return once deployed (needs a running cluster)")
    p = stage("validate", cmd_validate, "data gate: check a dataset against the spec and the champion's profile")
    p.add_argument("--data", help="Parquet/CSV file, folder or URI (default: the spec's data source)")
    p = stage("gate", cmd_gate, "model gate: challenger vs champion on the holdout; promote if better (exit 0/1/2)")
    p.add_argument("--challenger", required=True, help="e.g. models:/ray-app-model@challenger")
    p.add_argument("--no-promote", action="store_true", help="report only; move no alias, write no audit")
    p = training_stage("pipeline", cmd_pipeline, "validate -> train -> gate -> promote; exits at the first failed gate")
    p.add_argument("--canary", action="store_true", help="a challenger that passes the gate goes through a canary "
                                                         "rollout (the spec's rollout section) instead of promotion")
    p.add_argument("--incident", help="the incident this run answers (the retrain webhook sets it): every step is "
                                      "audited under it")
    p = stage("rollback", cmd_rollback, "move champion back to the previous version, with an audit record")
    p.add_argument("--model-name", help="registered model name (default: the spec's registry.model_name)")
    p.add_argument("--reason", default="manual rollback", help="why, for the audit log")
    p = stage("rollout", cmd_rollout, "canary: step the challenger's weight, analyse each step in Prometheus, "
                                      "promote or roll back (exit 0 promoted, 1 rolled back, 2 error)")
    manual = p.add_mutually_exclusive_group()
    manual.add_argument("--promote", action="store_true", help="promote the challenger now (alias, weights, audit)")
    manual.add_argument("--abort", action="store_true", help="roll back now: all traffic to the champion, audited")
    p.add_argument("--reason", default="operator decision", help="why, for the audit log (with --promote/--abort)")
    p = stage("drift", cmd_drift, "offline drift of one dataset against another: KS/chi-square with Bonferroni "
                                  "and PSI; a table and a plot per drifted feature (exit 1 when any drifted)")
    p.add_argument("--reference", required=True, help="Parquet/CSV file, folder or URI (e.g. the training data)")
    p.add_argument("--current", required=True, help="Parquet/CSV file, folder or URI to compare")
    p.add_argument("--output", default="drift-report", help="folder for report.md, report.json and PNGs")
    p = stage("webhook", cmd_webhook, "Alertmanager webhook: a drift alert labelled action=retrain submits "
                                      "`ray-app pipeline --canary` as a Ray job; POST /rollout/promote|abort "
                                      "controls the rollout (bearer RAY_APP_ADMIN_TOKEN)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9095)
    p.add_argument("--cooldown", type=float, default=COOLDOWN_S, metavar="SECONDS",
                   help=f"after a retrain ends, new alerts wait this long (default {COOLDOWN_S:g})")
    p = stage("incidents", cmd_incidents, "the retraining loop's incidents: alert, job, data gate, training, gate, "
                                          "rollout and outcome, with the seconds from the alert to each")
    p.add_argument("--id", help="one incident's whole chain, step by step")
    p.add_argument("--json", action="store_true", help="print the summaries (or the chain's records) as JSON")
    p = stage("export", cmd_export, "export a model to ONNX or TorchScript with its preprocessor; parity-checked")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--output", required=True, help="folder to write the bundle and the exported model into")
    p = stage("explain", cmd_explain, "feature attributions (Integrated Gradients) of a model on rows of a dataset: "
                                      "a table and a bar chart")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--data", required=True, help="Parquet/CSV file or folder with the model's features")
    p.add_argument("--rows", type=int, default=500, help="how many of its first rows to explain (default 500)")
    p.add_argument("--output", default="explain-report", help="folder for attributions.csv and attributions.png")
    p = training_stage("demo", cmd_demo, "built-in data to a served model: ingest, train, register champion, serve")
    p.add_argument("--port", type=int, default=DEMO_PORT)
    p.add_argument("--keep-serving", action="store_true", help="keep the endpoint up until Ctrl-C")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.spec, args.overrides)
        paths = RuntimePaths.resolve().ensure()
        if args.local:
            paths = paths.model_copy(update={"local_ray": True})
        if args.verbose:
            return args.func(Stage(args, cfg, paths))
        log_file = log_file_for(args.command, paths.home / "logs")
        with quiet_console(log_file):
            print(f"[logs] {log_file} (-v prints them here)", file=sys.stderr)
            return args.func(Stage(args, cfg, paths.model_copy(update={"log_file": log_file})))
    except Exception as exc:  # an error is exit 2, never 1 (which means "rejected by a gate")
        mistake = user_mistake(exc)
        if mistake is None or args.debug:
            traceback.print_exc()
        if mistake is not None:
            print(f"error: {mistake}", file=sys.stderr)
        return ExitCode.ERROR


def user_mistake(exc: BaseException) -> str | None:
    """The one-line message of an error the user can fix (a bad file, spec, argument or model URI), also when it
    was raised inside a Ray task; None for a bug, whose traceback is printed."""
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: the task's own exception
    if cause is not None and cause is not exc and isinstance(cause, BaseException):
        return user_mistake(cause)
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        return f"invalid config: {problems}"
    if isinstance(exc, MlflowException):
        return str(exc.message).strip().splitlines()[0]
    if isinstance(exc, FileNotFoundError) and exc.filename is None:
        return None  # no file named (os.getcwd() of a deleted folder): the traceback is the only clue
    if isinstance(exc, UserError | LookupError | FileNotFoundError):  # one line, however the message was laid out
        return " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
    return None


if __name__ == "__main__":
    sys.exit(main())
