"""What each `ray-app` stage does and prints, given its parsed options (`cli.py` parses and dispatches)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ray_app.config import ExitCode, ExperimentConfig, RuntimePaths, UserError
from ray_app.connect import connect_ray

if TYPE_CHECKING:
    from ray_app.registry import ModelRegistry


@dataclass
class Stage:
    """What a stage gets: its parsed options, the config, the runtime paths, and the registry (built once)."""

    args: argparse.Namespace
    cfg: ExperimentConfig
    paths: RuntimePaths

    @cached_property
    def registry(self) -> ModelRegistry:  # imported on first use: MLflow is slow to import
        from ray_app.registry import ModelRegistry

        return ModelRegistry.from_paths(self.paths)

    @property
    def model_name(self) -> str:
        return getattr(self.args, "model_name", None) or self.cfg.registry.model_name


def _connect_for_training(s: Stage, stage: str = "training", dashboard: bool = False) -> None:
    """Check the data source, join Ray, then make sure one training run (or tuning trial) can get its resources,
    or say why not."""
    from ray_app.data.preprocess import preflight
    from ray_app.resources import require, training_need
    from ray_app.train.trainer import check_storage

    preflight(s.cfg.data, s.paths.data_dir)  # a bad file or spec is one error line before Ray starts
    connect_ray(s.paths, dashboard=dashboard)
    check_storage(s.paths.storage_path)  # before the data pass, not after it
    require(training_need(s.cfg, stage), s.args.wait_for_resources, log=lambda line: print(line, file=sys.stderr))


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _verdict(passed: bool) -> ExitCode:
    return ExitCode.OK if passed else ExitCode.REJECTED


def cmd_ingest(s: Stage) -> int:
    from ray_app.data.preprocess import preflight, prepare
    from ray_app.data.splits import CACHE_FOLDER, clear

    if s.args.clear_cache:
        removed = clear(s.paths.storage_path)
        print(f"split cache: removed {removed} version(s) from {s.paths.storage_path.rstrip('/')}/{CACHE_FOLDER}")
        return ExitCode.OK

    preflight(s.cfg.data, s.paths.data_dir)
    connect_ray(s.paths)
    data = prepare(s.cfg.data, s.paths)
    _print({"dataset_version": data.version.model_dump(), "features": data.spec.model_dump(),
            "splits": data.cache.counts(), "split_cache": data.cache.root})
    return ExitCode.OK


def cmd_train(s: Stage) -> int:
    from ray_app.pipeline import run_training

    _connect_for_training(s)
    report = run_training(s.cfg, s.paths, run_name=s.args.run_name, registry=s.registry)
    if s.args.alias:
        s.registry.set_alias(report.model.name, s.args.alias, report.model.version)
    _print({"model_uri": report.model.uri, "alias": s.args.alias, "mlflow_run_id": report.mlflow_run_id,
            "dataset_version": report.dataset_version, "holdout": report.holdout, "baseline": report.baseline})
    _print_mlflow_hint(s.paths, report.mlflow_run_id)
    return ExitCode.OK


def cmd_tune(s: Stage) -> int:
    from ray_app.tune.search import run_tuning

    _connect_for_training(s, "tuning", dashboard=True)
    report = run_tuning(s.cfg, s.paths, name=s.args.name, resume=s.args.resume, registry=s.registry)
    _print({"model_uri": report.model.uri, "alias": "challenger", "mlflow_run_id": report.mlflow_run_id,
            "best_params": report.best_params, report.metric: report.best_metric, "trials": report.trials,
            "trial_epochs": report.trial_epochs,
            **({"cv": {"folds": report.cv.values, "mean": report.cv.mean, "std": report.cv.std}} if report.cv else {})})
    _print_mlflow_hint(s.paths, report.mlflow_run_id)
    return ExitCode.OK


def cmd_register(s: Stage) -> int:
    version = s.args.version or s.registry.latest_version(s.model_name).version
    s.registry.set_alias(s.model_name, s.args.alias, version)
    _print({"model": s.model_name, "version": version, "alias": s.args.alias,
            "uri": f"models:/{s.model_name}@{s.args.alias}"})
    return ExitCode.OK


def cmd_aliases(s: Stage) -> int:
    from ray_app.registry import ALIASES

    _print({"model": s.model_name, **{alias: s.registry.alias_version(s.model_name, alias) for alias in ALIASES}})
    return ExitCode.OK


def cmd_predict(s: Stage) -> int:
    from ray_app.data.sources import check_readable, resolve_files
    from ray_app.serve.batch import score_files
    from ray_app.serve.variant import RegistryLoader

    s.registry.resolve(s.args.model_uri)  # a wrong URI or a damaged file is one error line before Ray starts
    check_readable(resolve_files(s.args.input))
    connect_ray(s.paths)
    rows = score_files(s.args.input, s.args.output, s.args.model_uri, RegistryLoader(s.paths.tracking_uri),
                       concurrency=s.args.concurrency)
    _print({"rows_scored": rows, "output": s.args.output, "model_uri": s.args.model_uri})
    return ExitCode.OK


def cmd_validate(s: Stage) -> int:
    from ray_app.pipeline import run_data_gate

    connect_ray(s.paths)
    report = run_data_gate(s.cfg, s.paths, s.args.data, registry=s.registry)
    print(report.render())
    return _verdict(report.passed)


def cmd_gate(s: Stage) -> int:
    from ray_app.pipeline import gate_and_promote, run_gate

    if s.args.no_promote:
        report, _ = run_gate(s.cfg, s.paths, s.args.challenger, s.registry)
        print(report.render())
        return _verdict(report.passed)
    report, code = gate_and_promote(s.cfg, s.paths, s.args.challenger, s.registry)
    print(report.render())
    print(f"audit: {s.paths.audit_log}")
    return code


def cmd_pipeline(s: Stage) -> int:
    from ray_app.pipeline import run_pipeline

    _connect_for_training(s)
    code = run_pipeline(s.cfg, s.paths, canary=s.args.canary, registry=s.registry, incident=s.args.incident)
    print(f"pipeline: {'PROMOTED' if code == ExitCode.OK else 'REJECTED'} (exit {code})")
    return code


def cmd_rollback(s: Stage) -> int:
    record = s.registry.record_decision("rollback", s.model_name, None, s.args.reason)
    _print({"model": s.model_name, "champion": record["version"], "demoted": record["demoted"],
            "audit": str(s.paths.audit_log)})
    return ExitCode.OK


def cmd_rollout(s: Stage) -> int:
    from ray_app.rollout import RolloutController

    controller = RolloutController(s.cfg, s.paths, registry=s.registry)
    if s.args.promote:
        outcome = controller.promote(f"manual: {s.args.reason}")
    elif s.args.abort:
        outcome = controller.abort(f"manual: {s.args.reason}")
    else:
        outcome = controller.run()
    _print(asdict(outcome))
    print(f"rollout: {outcome.decision.upper()} (challenger version {outcome.version})")
    return _verdict(outcome.decision == "promoted")


def cmd_drift(s: Stage) -> int:
    from ray_app.data.sources import check_readable, read_dataset, resolve_files
    from ray_app.monitor.drift import compare_datasets, write_report

    files = [resolve_files(source) for source in (s.args.reference, s.args.current)]
    for found in files:  # a damaged file is one error line naming it, before Ray starts
        check_readable(found)
    connect_ray(s.paths)
    report, reference, current = compare_datasets(*(read_dataset(f) for f in files), s.cfg.monitor)
    written = write_report(report, reference, current, Path(s.args.output))
    print(report.table())
    print(f"drift: {len(report.drifted)} feature(s) drifted: {', '.join(report.drifted) or 'none'}; "
          f"report in {', '.join(str(p) for p in written)}")
    return _verdict(not report.drifted)


def cmd_webhook(s: Stage) -> int:
    from ray_app.loop import serve_webhook

    serve_webhook(s.cfg, s.paths, s.args.spec, s.args.host, s.args.port, s.args.cooldown)
    return ExitCode.OK


def cmd_incidents(s: Stage) -> int:
    from ray_app.incidents import read_incidents, render_chain, render_incidents

    incidents = read_incidents(s.paths.audit_log)
    if s.args.id:
        found = [i for i in incidents if i.id == s.args.id]
        if not found:
            known = ", ".join(i.id for i in incidents[-5:]) or "none yet"
            print(f"error: no incident {s.args.id!r} in {s.paths.audit_log} (latest: {known})", file=sys.stderr)
            return ExitCode.ERROR
        print(json.dumps(found[0].records, indent=1, default=str) if s.args.json else render_chain(found[0]))
        return ExitCode.OK
    print(json.dumps([i.summary() for i in incidents], indent=1) if s.args.json else render_incidents(incidents))
    return ExitCode.OK


def cmd_export(s: Stage) -> int:
    from ray_app.data.preprocess import split_data
    from ray_app.package import ParityError, export_checked

    bundle, ref = s.registry.load_bundle(s.args.model_uri)
    connect_ray(s.paths)
    cache, _ = split_data(s.cfg.data, s.paths)
    rows = cache.sample("holdout", s.cfg.gate.sample_rows)
    try:
        target, error = export_checked(bundle, s.args.output, s.args.format, rows, s.cfg.gate.parity_tolerance)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.REJECTED
    s.registry.log_export(ref, s.args.output, s.args.format, error)
    _print({"model": ref.uri, "format": s.args.format, "file": str(target), "parity_max_abs_diff": error})
    return ExitCode.OK


def cmd_explain(s: Stage) -> int:
    from ray_app.data.sources import head_rows, resolve_files
    from ray_app.explain import global_attributions
    from ray_app.reports import attribution_chart

    bundle, ref = s.registry.load_bundle(s.args.model_uri)
    rows = head_rows(resolve_files(s.args.data), s.args.rows)
    missing = [name for name in bundle.schema.features if name not in rows]
    if missing:
        raise UserError(f"{s.args.data} lacks the model's features {', '.join(missing)}")
    table = global_attributions(bundle, rows[bundle.schema.features])
    folder = Path(s.args.output)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "attributions.csv", index=False)
    (folder / "attributions.png").write_bytes(attribution_chart(table, f"{ref.name} version {ref.version}"))
    print(f"{ref.uri} on {min(len(rows), s.args.rows)} rows of {s.args.data} (Integrated Gradients):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {folder / 'attributions.csv'} and {folder / 'attributions.png'}")
    return ExitCode.OK


def cmd_serve(s: Stage) -> int:
    from ray_app.serve.app import (
        HAPROXY_INGRESS_ENV,
        start_serving,
        stop_haproxy_started_since,
        wait_for_interrupt,
    )

    s.registry.resolve(s.args.model_uri)  # a wrong URI is one error line here, not a replica that never starts
    if s.args.ingress == "haproxy":
        os.environ.update(HAPROXY_INGRESS_ENV)  # inherited by the Serve controller of a Ray started here
    where = connect_ray(s.paths)
    if s.args.ingress == "haproxy" and "private local Ray" not in where:
        print("[serve] --ingress haproxy applies to a Ray started here; this cluster keeps the ingress it was "
              "started with (INGRESS=haproxy make cluster-up NODES=0)", file=sys.stderr)
    started = time.time()
    url = start_serving(s.args.model_uri, s.cfg, s.paths, s.args.port, batching=not s.args.no_batching)
    print(f"serving {s.args.model_uri} at {url} (GET {url.rsplit('/', 1)[0]}/schema); Ctrl-C stops")
    if not s.args.detach:
        wait_for_interrupt()
        if s.args.ingress == "haproxy":  # the Ray started here stops first: then nothing restarts its HAProxy
            import ray

            ray.shutdown()
            stop_haproxy_started_since(started)
    return ExitCode.OK


def cmd_demo(s: Stage) -> int:
    from ray_app.demo import run_demo
    from ray_app.serve.app import wait_for_interrupt

    _connect_for_training(s)
    code = run_demo(s.cfg, s.paths, s.args.port, s.registry)
    _print_mlflow_hint(s.paths)
    for name, url in (("Ray dashboard", s.paths.dashboard_url), ("Prometheus", s.paths.prometheus_url)):
        if _answers(url):  # a cluster from `make cluster-up`, `make monitor-up`: a private Ray has neither
            print(f"[demo] {name}: {url}")
    if s.args.keep_serving and code == ExitCode.OK:
        print(f"[demo] still serving at http://127.0.0.1:{s.args.port}/predict; Ctrl-C stops")
        wait_for_interrupt()
    return code


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _print_mlflow_hint(paths: RuntimePaths, run_id: str | None = None) -> None:
    what = f"run {run_id}" if run_id else "runs, models and audit tags"
    if paths.artifact_root is None:  # a tracking server: its own UI, its own artifact root
        print(f"[mlflow] {what} on {paths.tracking_uri}")
        return
    print(f"[mlflow] {what} in {paths.tracking_uri} (artifacts under {paths.artifact_root})")
    print(f"[mlflow] browse it: mlflow ui --backend-store-uri {paths.tracking_uri} --host 127.0.0.1 --port 5000")


