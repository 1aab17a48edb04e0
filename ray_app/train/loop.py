"""`train_loop_per_worker`: what every Ray Train worker runs, with per-epoch checkpoints and resume."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ray_app.console import progress_line
from ray_app.data.preprocess import FEATURES_COLUMN, TARGET_COLUMN
from ray_app.metrics import PRIMARY_METRIC, classification_metrics, regression_metrics
from ray_app.telemetry import HeldGauges
from ray_app.train.model import MLPSpec, TabularMLP

CHECKPOINT_FILE = "state.pt"


class LoopSettings(BaseModel):
    """The loop's inputs, passed as `train_loop_config` (a dict) and validated again on each worker."""

    model_config = ConfigDict(frozen=True)

    mlp: MLPSpec
    task: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    target_std: float = 1.0
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def train_epoch(model: nn.Module, batches: Iterable[dict], loss_fn: nn.Module, optimizer, device) -> float:
    """One pass over the batches; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        x, y = batch[FEATURES_COLUMN].to(device), batch[TARGET_COLUMN].to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], task: str, device, target_std: float = 1.0) -> dict:
    """Loss and task metrics over all batches (regression errors in the label's own units)."""
    model.eval()
    outputs, targets = [], []
    for batch in batches:
        outputs.append(model(batch[FEATURES_COLUMN].to(device)).cpu())
        targets.append(batch[TARGET_COLUMN].cpu())
    if not outputs:
        return {"loss": math.nan}
    out, y = torch.cat(outputs), torch.cat(targets)
    loss = float(loss_function(task)(out, y))
    if task == "classification":
        return {"loss": loss, **classification_metrics(y.numpy(), torch.softmax(out, dim=1).numpy())}
    return {"loss": loss, **regression_metrics(y.numpy() * target_std, out.numpy() * target_std)}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class _MlflowEpochLogger:
    """Rank 0 logs each epoch's metrics into the run that the driver opened."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=rows)


class _EpochGauges:
    """Rank 0's last epoch as Ray metrics (`ray_train_epoch`, `ray_train_metric`) for the training dashboard."""

    def __init__(self, run: str):
        from ray.util.metrics import Gauge

        self.run = run
        self.held = HeldGauges()  # held between epochs: an epoch longer than Ray's gauge TTL (~20 s) left gaps
        self.epoch = Gauge("train_epoch", "last finished epoch of a training run or tuning trial", tag_keys=("run",))
        self.value = Gauge("train_metric", "metrics of the last finished epoch", tag_keys=("run", "metric"))

    def set(self, metrics: dict) -> None:
        self.held.set(self.epoch, metrics["epoch"], {"run": self.run})
        for name, value in metrics.items():
            if name.startswith(("train_loss", "val_")) and np.isfinite(value):
                self.held.set(self.value, float(value), {"run": self.run, "metric": name})


def _from_rank_zero(metrics: dict) -> dict:
    """Rank 0's validation metrics on every worker, so that all of them report the same figures."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return metrics
    shared = [metrics]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def train_loop_per_worker(config: dict) -> None:
    """Train the MLP on this worker's shard; restore from the last checkpoint if Ray Train hands one."""
    import ray.data
    import ray.train
    import ray.train.torch

    settings = LoopSettings.model_validate(config)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed)
    model = ray.train.torch.prepare_model(TabularMLP(settings.mlp))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    loss_fn = loss_function(settings.task)

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    logger = None
    if rank == 0 and settings.tracking_uri and settings.mlflow_run_id:
        logger = _MlflowEpochLogger(settings.tracking_uri, settings.mlflow_run_id)
    experiment = ray.train.get_context().get_experiment_name()
    run = settings.mlflow_run_id or experiment
    gauges = _EpochGauges(run) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    dtypes = {FEATURES_COLUMN: torch.float32,
              TARGET_COLUMN: torch.int64 if settings.task == "classification" else torch.float32}

    for epoch in range(start_epoch, settings.epochs):
        train_loss = train_epoch(
            model, train_shard.iter_torch_batches(batch_size=settings.batch_size, dtypes=dtypes, device=device),
            loss_fn, optimizer, device,
        )
        val = {}
        if rank == 0:
            val = evaluate(_unwrap(model), val_shard.iter_torch_batches(batch_size=1024, dtypes=dtypes, device=device),
                           settings.task, device, settings.target_std)
        val = _from_rank_zero(val)
        metrics = {"epoch": epoch, "train_loss": train_loss, "resumed_from_epoch": start_epoch,
                   **{f"val_{name}": value for name, value in val.items()}}
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save({"epoch": epoch, "model": _unwrap(model).state_dict(),
                            "optimizer": optimizer.state_dict()}, Path(folder) / CHECKPOINT_FILE)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)
        if logger is not None:
            logger.log(metrics, step=epoch)
        if gauges is not None:
            gauges.set(metrics)
            primary = f"val_{PRIMARY_METRIC[settings.task]}"
            shown = {"train_loss": train_loss, **({primary: metrics[primary]} if primary in metrics else {})}
            print(progress_line(experiment, epoch + 1, settings.epochs, shown), flush=True)
    if gauges is not None:
        gauges.held.stop()
