"""The Ray Train `TorchTrainer` that runs the loop on N workers, CPU or GPU, and survives a dead worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ray_app.config import ExperimentConfig, RuntimePaths, UserError
from ray_app.data.preprocess import PreparedData
from ray_app.train.loop import CHECKPOINT_FILE, LoopSettings, train_loop_per_worker
from ray_app.train.model import MLPSpec


@dataclass
class TrainOutcome:
    """What a finished training run leaves: the final weights, the last epoch's metrics, where it lives."""

    mlp: MLPSpec
    state_dict: dict
    metrics: dict
    checkpoint_path: str
    run_name: str


def loop_settings(cfg: ExperimentConfig, data: PreparedData, tracking_uri: str | None = None,
                  mlflow_run_id: str | None = None) -> LoopSettings:
    """The loop's settings for this experiment and these prepared data."""
    mlp = MLPSpec(in_features=data.num_features, out_features=data.target.num_outputs,
                  width=cfg.model.width, depth=cfg.model.depth, dropout=cfg.model.dropout)
    return LoopSettings(mlp=mlp, task=data.spec.task, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                        lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, seed=cfg.train.seed,
                        target_std=data.target.std, tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id)


def build_trainer(cfg: ExperimentConfig, data: PreparedData, paths: RuntimePaths, run_name: str,
                  settings: LoopSettings, callbacks: list | None = None):
    """A TorchTrainer whose run resumes when re-created with the same `run_name` and storage path."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=settings.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=paths.storage_path,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
            callbacks=callbacks,
        ),
        datasets={"train": data.model_inputs("train"), "val": data.model_inputs("val")},
        dataset_config=DataConfig(datasets_to_split=["train"]),  # val is read by rank 0 only
    )


def check_storage(storage_path: str) -> None:
    """A local folder works on one node only: across nodes, checkpoints need shared storage."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 and "://" not in storage_path:
        raise UserError(
            f"storage path {storage_path!r} is a local folder but the cluster has {len(nodes)} nodes: "
            "set RAY_APP_STORAGE to an s3:// or gs:// URI, or file:///path on a filesystem every node mounts"
        )


def train(cfg: ExperimentConfig, data: PreparedData, paths: RuntimePaths, run_name: str,
          tracking_uri: str | None = None, mlflow_run_id: str | None = None) -> TrainOutcome:
    """Fit the model with Ray Train and return the weights of the last checkpoint."""
    check_storage(paths.storage_path)
    settings = loop_settings(cfg, data, tracking_uri, mlflow_run_id)
    result = build_trainer(cfg, data, paths, run_name, settings).fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a checkpoint")
    return outcome_from_checkpoint(result.checkpoint, settings.mlp, dict(result.metrics), run_name)


def outcome_from_checkpoint(checkpoint, mlp: MLPSpec, metrics: dict, run_name: str) -> TrainOutcome:
    """Read the weights out of a checkpoint that the loop wrote."""
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return TrainOutcome(mlp=mlp, state_dict=state["model"], metrics=metrics, checkpoint_path=checkpoint.path,
                        run_name=run_name)
