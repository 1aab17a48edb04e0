"""`ray-app`: one subcommand per stage; each also runs as `ray job submit --working-dir . -- ray-app <stage>`."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable

import yaml

from ray_app.config import ConfigError, ExperimentConfig, RuntimePaths, UserError
from ray_app.connect import connect_ray

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2  # gates: 0 passed/promoted, 1 rejected, 2 error
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


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_ingest(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.data.preprocess import prepare

    connect_ray(paths)
    data = prepare(cfg.data, paths.data_dir)
    _print({"dataset_version": data.version.model_dump(), "features": data.spec.model_dump(),
            "splits": {name: ds.count() for name, ds in data.raw.items()}})
    return EXIT_OK


def cmd_train(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.pipeline import run_training

    connect_ray(paths)
    report = run_training(cfg, paths, run_name=args.run_name)
    if args.alias:
        from ray_app.registry import ModelRegistry

        ModelRegistry(paths.tracking_uri).set_alias(report.model.name, args.alias, report.model.version)
    _print({"model_uri": report.model.uri, "alias": args.alias, "mlflow_run_id": report.mlflow_run_id,
            "dataset_version": report.dataset_version, "holdout": report.holdout, "baseline": report.baseline})
    _print_mlflow_hint(paths, report.mlflow_run_id)
    return EXIT_OK


def cmd_tune(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.tune.search import run_tuning

    connect_ray(paths, dashboard=True)
    report = run_tuning(cfg, paths, name=args.name, resume=args.resume)
    _print({"model_uri": report.model.uri, "alias": "challenger", "mlflow_run_id": report.mlflow_run_id,
            "best_params": report.best_params, report.metric: report.best_metric, "trials": report.trials,
            "trial_epochs": report.trial_epochs,
            **({"cv": {"folds": report.cv.values, "mean": report.cv.mean, "std": report.cv.std}} if report.cv else {})})
    _print_mlflow_hint(paths, report.mlflow_run_id)
    return EXIT_OK


def cmd_register(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.registry import ModelRegistry

    registry = ModelRegistry(paths.tracking_uri)
    name = args.model_name or cfg.registry.model_name
    version = args.version or registry.latest_version(name).version
    registry.set_alias(name, args.alias, version)
    _print({"model": name, "version": version, "alias": args.alias, "uri": f"models:/{name}@{args.alias}"})
    return EXIT_OK


def cmd_aliases(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.registry import ALIASES, ModelRegistry

    registry = ModelRegistry(paths.tracking_uri)
    name = args.model_name or cfg.registry.model_name
    _print({"model": name, **{alias: registry.alias_version(name, alias) for alias in ALIASES}})
    return EXIT_OK


def cmd_predict(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.serve.batch import score_files
    from ray_app.serve.variant import RegistryLoader

    connect_ray(paths)
    rows = score_files(args.input, args.output, args.model_uri, RegistryLoader(paths.tracking_uri),
                       concurrency=args.concurrency)
    _print({"rows_scored": rows, "output": args.output, "model_uri": args.model_uri})
    return EXIT_OK


def cmd_validate(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.pipeline import run_data_gate

    report = run_data_gate(cfg, paths, args.data)
    print(report.render())
    return EXIT_OK if report.passed else EXIT_REJECTED


def cmd_gate(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.pipeline import gate_and_promote, run_gate

    if args.no_promote:
        report, _ = run_gate(cfg, paths, args.challenger)
        print(report.render())
        return EXIT_OK if report.passed else EXIT_REJECTED
    report, code = gate_and_promote(cfg, paths, args.challenger)
    print(report.render())
    print(f"audit: {paths.audit_log}")
    return code


def cmd_pipeline(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.pipeline import run_pipeline

    connect_ray(paths)
    code = run_pipeline(cfg, paths, canary=args.canary)
    print(f"pipeline: {'PROMOTED' if code == EXIT_OK else 'REJECTED'} (exit {code})")
    return code


def cmd_rollback(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.registry import ModelRegistry

    registry = ModelRegistry(paths.tracking_uri)
    name = args.model_name or cfg.registry.model_name
    demoted, restored = registry.rollback(name)
    registry.record_audit(name, restored, {"action": "rollback", "actor": paths.actor, "decision": True,
                                           "reason": args.reason, "demoted": demoted}, paths.audit_log)
    _print({"model": name, "champion": restored, "demoted": demoted, "audit": str(paths.audit_log)})
    return EXIT_OK


def cmd_rollout(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from dataclasses import asdict

    from ray_app.rollout import RolloutController

    controller = RolloutController(cfg, paths)
    if args.promote:
        outcome = controller.promote(f"manual: {args.reason}")
    elif args.abort:
        outcome = controller.abort(f"manual: {args.reason}")
    else:
        outcome = controller.run()
    _print(asdict(outcome))
    print(f"rollout: {outcome.decision.upper()} (challenger version {outcome.version})")
    return EXIT_OK if outcome.decision == "promoted" else EXIT_REJECTED


def cmd_drift(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from pathlib import Path

    from ray_app.data.sources import read_frame, resolve_files
    from ray_app.monitor.drift import compare_frames, write_report

    reference, current = (read_frame(resolve_files(source)) for source in (args.reference, args.current))
    report = compare_frames(reference, current, cfg.monitor)
    written = write_report(report, reference, current, Path(args.output))
    print(report.table())
    print(f"drift: {len(report.drifted)} feature(s) drifted: {', '.join(report.drifted) or 'none'}; "
          f"report in {', '.join(str(p) for p in written)}")
    return EXIT_REJECTED if report.drifted else EXIT_OK


def cmd_webhook(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.monitor.webhook import serve_webhook

    serve_webhook(cfg, paths, args.spec, args.host, args.port)
    return EXIT_OK


def cmd_export(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    from ray_app.data.preprocess import holdout_frame
    from ray_app.package import export_model, parity_error
    from ray_app.registry import ModelRegistry

    registry = ModelRegistry(paths.tracking_uri)
    bundle, ref = registry.load_bundle(args.model_uri)
    target = export_model(bundle, args.output, args.format)
    holdout, _ = holdout_frame(cfg.data, paths.data_dir)
    error = parity_error(bundle, target, args.format, holdout)
    if error > cfg.gate.parity_tolerance:
        print(f"error: {args.format} export differs from the model by {error:.2e} "
              f"(tolerance {cfg.gate.parity_tolerance:.0e})", file=sys.stderr)
        return EXIT_REJECTED
    if ref.run_id:
        registry.client.log_artifacts(ref.run_id, args.output, artifact_path=f"exports/v{ref.version}/{args.format}")
        registry.client.set_model_version_tag(ref.name, ref.version, f"export.{args.format}", f"parity {error:.2e}")
    _print({"model": ref.uri, "format": args.format, "file": str(target), "parity_max_abs_diff": error})
    return EXIT_OK


def start_serving(model_uri: str, cfg: ExperimentConfig, paths: RuntimePaths, port: int, batching: bool = True) -> str:
    """Run one model variant on Serve at http://127.0.0.1:<port>/ and return the predict URL."""
    from ray import serve

    from ray_app.serve.app import VariantArgs, build_single

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_single(VariantArgs(model_uri=model_uri, tracking_uri=paths.tracking_uri, batching=batching,
                                   monitor=cfg.monitor, **cfg.serve.model_dump()).model_dump())
    serve.run(app, name="model", route_prefix="/")
    return f"http://127.0.0.1:{port}/predict"


def cmd_serve(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    connect_ray(paths)
    url = start_serving(args.model_uri, cfg, paths, args.port, batching=not args.no_batching)
    print(f"serving {args.model_uri} at {url} (GET {url.rsplit('/', 1)[0]}/schema); Ctrl-C stops")
    if args.detach:
        return EXIT_OK
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_demo(args, cfg: ExperimentConfig, paths: RuntimePaths) -> int:
    import httpx

    from ray_app.pipeline import run_pipeline

    connect_ray(paths)
    print(f"[demo] pipeline {cfg.name!r} on {cfg.data.source!r}: data gate, {cfg.train.num_workers}-worker Ray Train, "
          "model gate, promotion")
    code = run_pipeline(cfg, paths, log=lambda text: print("[demo] " + text.replace("\n", "\n[demo] ")))
    if code == EXIT_REJECTED:
        print("[demo] the new model was not promoted; serving the current champion")
    champion = f"models:/{cfg.registry.model_name}@champion"
    url = start_serving(champion, cfg, paths, args.port)
    schema = httpx.get(url.rsplit("/", 1)[0] + "/schema", timeout=30).json()["schema"]
    sample = {name: 0.0 for name in schema["numeric"]}
    sample.update({name: values[0] for name, values in schema["categorical"].items()})
    response = httpx.post(url, json={"instances": [sample]}, timeout=30)
    print(f"[demo] POST {url} {json.dumps({'instances': [sample]})}")
    print(f"[demo] -> {response.status_code} {response.text}")
    _print_mlflow_hint(paths)
    if args.keep_serving:
        print(f"[demo] still serving at {url}; Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return EXIT_OK if response.status_code == 200 else EXIT_ERROR


def _print_mlflow_hint(paths: RuntimePaths, run_id: str | None = None) -> None:
    what = f"run {run_id}" if run_id else "runs, models and audit tags"
    if paths.artifact_root is None:  # a tracking server: its own UI, its own artifact root
        print(f"[mlflow] {what} on {paths.tracking_uri}")
        return
    print(f"[mlflow] {what} in {paths.tracking_uri} (artifacts under {paths.artifact_root})")
    print(f"[mlflow] browse it: mlflow ui --backend-store-uri {paths.tracking_uri} --host 127.0.0.1 --port 5000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name: str, func: Callable, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--spec", help="experiment config YAML (see tuning/); defaults apply without one")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one config field, e.g. --set train.epochs=3 (repeatable)")
        p.add_argument("--local", action="store_true", help="run on a private local Ray, not the cluster in "
                                                            "RAY_ADDRESS or one started by `ray start`")
        p.set_defaults(func=func)
        return p

    stage("ingest", cmd_ingest, "read the data, fingerprint it and show its splits")
    p = stage("train", cmd_train, "train with Ray Train, log to MLflow and register a model version")
    p.add_argument("--run-name", help="Ray Train run name; re-using one resumes from its checkpoints")
    p.add_argument("--alias", help="also point this alias (e.g. challenger) at the new version")
    p = stage("tune", cmd_tune, "search hyperparameters (Optuna TPE + ASHA by default) and register the best as "
                                "challenger")
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
    p.add_argument("--detach", action="store_true", help="return once deployed (needs a running cluster)")
    p = stage("validate", cmd_validate, "data gate: check a dataset against the spec and the champion's profile")
    p.add_argument("--data", help="Parquet/CSV file, folder or URI (default: the spec's data source)")
    p = stage("gate", cmd_gate, "model gate: challenger vs champion on the holdout; promote if better (exit 0/1/2)")
    p.add_argument("--challenger", required=True, help="e.g. models:/ray-app-model@challenger")
    p.add_argument("--no-promote", action="store_true", help="report only; move no alias, write no audit")
    p = stage("pipeline", cmd_pipeline, "validate -> train -> gate -> promote; exits at the first failed gate")
    p.add_argument("--canary", action="store_true", help="a challenger that passes the gate goes through a canary "
                                                         "rollout (the spec's rollout section) instead of promotion")
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
    p = stage("export", cmd_export, "export a model to ONNX or TorchScript with its preprocessor; parity-checked")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--output", required=True, help="folder to write the bundle and the exported model into")
    p = stage("demo", cmd_demo, "built-in data to a served model: ingest, train, register champion, serve")
    p.add_argument("--port", type=int, default=DEMO_PORT)
    p.add_argument("--keep-serving", action="store_true", help="keep the endpoint up until Ctrl-C")
    return parser


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.spec, args.overrides)
        paths = RuntimePaths.resolve().ensure()
        if args.local:
            paths = paths.model_copy(update={"local_ray": True})
        return args.func(args, cfg, paths)
    except (UserError, LookupError, FileNotFoundError, MlflowException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # an error is exit 2, never 1 (which means "rejected by a gate")
        traceback.print_exc()
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

