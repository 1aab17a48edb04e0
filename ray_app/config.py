"""Typed configuration: one ExperimentConfig loaded from YAML, and the runtime paths resolved once."""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ExitCode(IntEnum):
    """What every stage exits with, so any CI system can stop on a gate."""

    OK = 0          # passed, promoted, done
    REJECTED = 1    # a gate (data, model, rollout) said no; an offline drift report found drift
    ERROR = 2       # a user error (one `error:` line) or a bug (a traceback)


class UserError(ValueError):
    """A mistake the user can fix (a config, a data source, a cluster, a model URI). The CLI prints the message as
    one `error:` line and exits 2; anything else is a bug and keeps its traceback."""


class ConfigError(UserError):
    """A configuration file that cannot be read or does not validate; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Strict):
    """Knobs of the built-in synthetic tabular generator."""

    rows: int = Field(2000, ge=10)
    drift: float = Field(0.0, ge=0.0, description="shift of the numeric means, in standard deviations")
    concept_drift: float = Field(0.0, description="the label rule moves: x5, which had no effect on the label, "
                                                  "takes this much off its logit per unit")


class DataConfig(_Strict):
    """Where the data comes from and how it is split.

    `source` is a built-in set (`synthetic`, `breast_cancer`, `diabetes`) or a Parquet/CSV path or URI.
    """

    source: str = "synthetic"
    label: str | None = None
    numeric: list[str] | None = None
    categorical: list[str] | None = None
    task: Literal["classification", "regression"] | None = None
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    holdout_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()
    feedback: str | None = None  # labelled rows from the router's /feedback (Parquet folder), appended if present
    exclude: list[str] = Field(default_factory=list)  # ID and leaky columns: never features
    # A categorical feature keeps its most frequent categories; the rest encode as "other" (all zeros, as unseen)
    max_categories: int = Field(50, ge=2)
    # train and val smaller than this on disk (Parquet) are encoded once and held in the object store for the run;
    # larger ones stream from the split cache every epoch (a fixed cost of a few seconds an epoch on a small machine)
    materialize_below_mb: float = Field(256.0, ge=0)
    # Registration's holdout metrics read at most this many holdout rows (a seeded content-hash sample), so the
    # driver holds a bounded number of scores whatever the data's size.
    eval_rows: int = Field(200_000, ge=100)


class ModelConfig(_Strict):
    """Hyperparameters of the tabular MLP."""

    width: int = Field(64, ge=1, le=4096)
    depth: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainConfig(_Strict):
    """How training runs: workers, device, optimisation and failure handling."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    max_failures: int = Field(3, ge=0)
    checkpoints_to_keep: int = Field(2, ge=1)
    # PACK fills a node before the next (fast collectives); SPREAD puts workers on different nodes where it can, so
    # one lost node costs fewer of them (Ray Train's ScalingConfig.placement_strategy)
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"


class RegistryConfig(_Strict):
    """Where runs and models are recorded."""

    experiment: str = "ray-app"
    model_name: str = "ray-app-model"


class DataGateConfig(_Strict):
    """Rules of the data gate; the champion's reference profile adds ranges and categories."""

    min_rows: int = Field(50, ge=1)
    max_null_fraction: float = Field(0.0, ge=0.0, le=1.0)
    # with a champion: a column's null fraction may exceed the champion's training share by this much at most
    null_fraction_slack: float = Field(0.05, ge=0.0, le=1.0)
    min_class_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    range_slack: float = Field(0.25, ge=0.0, description="widen the reference [min, max] by this share of its span")
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)


class InvarianceCheck(_Strict):
    """Replacing `feature` (a category cycled, or a number shifted by `shift` std) should rarely flip a prediction."""

    feature: str
    shift: float = 0.0
    max_changed: float = Field(0.1, ge=0.0, le=1.0)


class MonotonicCheck(_Strict):
    """Raising `feature` by `delta` (in std units) must move the score in `direction` for almost every row."""

    feature: str
    direction: Literal["increasing", "decreasing"]
    delta: float = Field(0.5, gt=0)
    tolerance: float = Field(0.05, ge=0.0, le=1.0)


class SliceFloor(_Strict):
    """The metric on rows where `feature == value` must be at least `min`."""

    feature: str
    value: str | float
    metric: str
    min: float


class GateConfig(_Strict):
    """Thresholds of the model gate: noise-aware comparison, floors, latency, size and behaviour."""

    metric: str | None = None  # default: the task's primary metric (roc_auc or rmse)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    min_improvement: float = Field(0.0, ge=0.0)
    bootstrap_samples: int = Field(1000, ge=100)
    bootstrap_rows: int = Field(20_000, ge=100)  # the paired bootstrap draws from a seeded subsample this large
    sample_rows: int = Field(5_000, ge=50)  # latency, export parity and behaviour checks: a fixed seeded sample
    floors: dict[str, float] = Field(default_factory=dict)
    max_latency_p99_ms: float = Field(100.0, gt=0)
    max_size_mb: float = Field(100.0, gt=0)
    parity_tolerance: float = Field(1e-4, gt=0)
    invariance: list[InvarianceCheck] = Field(default_factory=list)
    monotonic: list[MonotonicCheck] = Field(default_factory=list)
    slices: list[SliceFloor] = Field(default_factory=list)
    data: DataGateConfig = DataGateConfig()


TUNABLE = ("model.width", "model.depth", "model.dropout", "train.lr", "train.batch_size", "train.weight_decay")


class Distribution(_Strict):
    """One dimension of a search space: `loguniform`/`uniform` floats, `randint` integers, or a `choice`."""

    type: Literal["loguniform", "uniform", "randint", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[float | int | str] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        return self


class TuneConfig(_Strict):
    """The search: space, objective, algorithm, early stopping, budget."""

    space: dict[str, Distribution] = Field(default_factory=dict)
    metric: str | None = None  # default: val_<primary metric>
    mode: Literal["max", "min"] | None = None
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    num_samples: int = Field(8, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    max_concurrent: int | None = Field(None, ge=1)
    trial_cpus: float = Field(0.25, gt=0)
    state_save_period_s: float = Field(0.0, ge=0, description="0 saves the search state after every event")
    cv: int | None = Field(None, ge=2, description="k-fold cross-validation of the best config")
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _known_parameters(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        unknown = sorted(set(space) - set(TUNABLE))
        if unknown:
            raise ValueError(f"cannot tune {', '.join(unknown)}: tunable are {', '.join(TUNABLE)}")
        return space

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> TuneConfig:
        if self.algorithm == "grid" and any(d.type != "choice" for d in self.space.values()):
            raise ValueError("algorithm grid needs every dimension of the space to be a choice")
        return self


class ServeSettings(_Strict):
    """Limits and batching of a model variant."""

    max_rows: int = Field(1000, ge=1)
    max_batch_size: int = Field(32, ge=1)
    # 0: a batch is whatever is queued when the replica is free, so a lone request never waits (bench/RESULTS.md)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0)
    # the compiled encoder + ONNX Runtime, used only where it matches transform_batch + torch within the tolerance
    fast_path: bool = True
    parity_tolerance: float = Field(1e-4, gt=0)


class RolloutThresholds(_Strict):
    """What a challenger must show at every step; comparisons with the champion need champion traffic."""

    min_requests: int = Field(50, ge=1)
    max_error_rate: float = Field(0.02, ge=0, le=1)
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)
    max_p99_ratio: float = Field(1.5, gt=0)
    p99_slack_ms: float = Field(25.0, ge=0)
    min_latency_requests: int = Field(100, ge=1)  # below this a p99 is the slowest request or two: not judged
    min_labels: int = Field(30, ge=1)
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    max_abs_error_increase: float = Field(0.10, ge=0)


class WeightTarget(_Strict):
    """Where weights are set: Serve's REST API (durable, like `serve deploy`), the router's admin route, or the
    `serveConfigV2` of a KubeRay RayService (through `kubectl`)."""

    via: Literal["serve", "admin", "rayservice"] = "serve"
    app: str = "ab"
    deployment: str = "ABRouter"
    admin_url: str = "http://127.0.0.1:8000/admin/weights"
    rayservice: str = "ray-app"  # the RayService's name (cluster/kuberay/rayservice.yaml)
    namespace: str | None = None  # default: kubectl's current namespace


class RolloutConfig(_Strict):
    """A canary rollout of the registry's challenger against the champion behind an ABRouter."""

    experiment: str = "champion-vs-challenger"  # the router's experiment, as in serve_configs/ab.yaml
    champion: str = "champion"
    challenger: str = "challenger"
    challenger_uri: str | None = None  # default: models:/<model_name>@challenger
    steps: list[float] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1)
    step_wait_s: float = Field(60.0, gt=0)
    settle_s: float = Field(15.0, ge=0)
    max_extensions: int = Field(3, ge=0)
    prometheus_url: str | None = None
    thresholds: RolloutThresholds = RolloutThresholds()
    target: WeightTarget = WeightTarget()

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        return steps


class MonitorConfig(_Strict):
    """Live drift monitoring: window length, the drift test's thresholds, and how variants batch their rows."""

    enabled: bool = True
    window_s: float = Field(300.0, gt=0)
    alpha: float = Field(0.01, gt=0, lt=1)      # family-wise, Bonferroni-corrected across features
    min_effect: float = Field(0.1, ge=0)         # PSI floor: 0.1 moderate, 0.25 large
    min_rows: int = Field(200, ge=1)             # a window with fewer rows is profiled but not judged
    # A variant profiles its buffer at this many rows or this often, off the request path. Profiling and the
    # monitor's merge cost ~2.6 us a row in batches of 16,384, ~5.9 in batches of 4,096 and ~78 in batches of 256
    # (6 numeric + 2 categorical features, one core); a batch holds the replica's GIL ~35 ms (bench/RESULTS.md).
    flush_rows: int = Field(16384, ge=1)
    flush_s: float = Field(30.0, gt=0)
    # share of requests profiled: at high traffic a sample describes the inputs as well, for less CPU
    sample_fraction: float = Field(1.0, gt=0, le=1)


class ExperimentConfig(_Strict):
    """The one object passed down through every stage."""

    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    registry: RegistryConfig = RegistryConfig()
    serve: ServeSettings = ServeSettings()
    gate: GateConfig = GateConfig()
    tune: TuneConfig = TuneConfig()
    rollout: RolloutConfig = RolloutConfig()
    monitor: MonitorConfig = MonitorConfig()

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Load and validate a YAML file; errors name the file and the offending field."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{path}: invalid config:\n{format_validation_error(exc)}") from None

    def with_overrides(self, **sections: dict) -> ExperimentConfig:
        """A copy with fields of some sections replaced, validated again (e.g. `train={"epochs": 2}`)."""
        raw = self.model_dump()
        for section, values in sections.items():
            raw[section] = {**raw[section], **values}
        try:
            return type(self).model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"invalid override:\n{format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: `  train.epochs: Input should be greater than or equal to 1 (got 0)`."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "<root>"
        got = f" (got {err['input']!r})" if err["type"] != "missing" and "input" in err else ""
        lines.append(f"  {where}: {err['msg']}{got}")
    return "\n".join(lines)


class RuntimePaths(_Strict):
    """Where this installation keeps its state. Resolved once, from the environment, here and nowhere else."""

    home: Path
    tracking_uri: str
    storage_path: str
    ray_address: str | None = None
    local_ray: bool = False  # a private local Ray even when a cluster runs (`--local`, RAY_APP_LOCAL_RAY=1)
    actor: str = "unknown"
    dashboard_url: str = "http://127.0.0.1:8265"
    prometheus_url: str = "http://127.0.0.1:9090"
    admin_token: str | None = Field(None, repr=False)
    object_store_mb: int | None = None  # a private local Ray's object store; None: Ray's default (30% of memory)
    log_file: Path | None = None  # a CLI stage's log (Ray's and MLflow's output); None: all on the terminal

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def audit_log(self) -> Path:
        return self.home / "audit.jsonl"

    @classmethod
    def resolve(cls, environ: dict[str, str] | None = None) -> RuntimePaths:
        """Read `RAY_APP_HOME`, `MLFLOW_TRACKING_URI`, `RAY_APP_STORAGE`, `RAY_ADDRESS` (`RAY_APP_LOCAL_RAY=1`
        ignores it and any running local cluster) and who is acting.

        The actor recorded in audit logs is `RAY_APP_ACTOR`, else the CI's `GITHUB_ACTOR`, else `USER`.
        `RAY_DASHBOARD_ADDRESS` (Serve's REST API), `RAY_APP_PROMETHEUS_URL` and `RAY_APP_ADMIN_TOKEN` (the bearer
        token of admin routes; without it they are off) serve the rollout controller, the router and the monitor.
        `RAY_APP_OBJECT_STORE_MB` sizes the object store of a private local Ray (default: Ray's own).
        """
        env = os.environ if environ is None else environ
        home = Path(env.get("RAY_APP_HOME", Path.home() / ".ray_app")).expanduser().resolve()
        return cls(
            home=home,
            tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            storage_path=env.get("RAY_APP_STORAGE", str(home / "ray_results")),
            ray_address=env.get("RAY_ADDRESS") or None,
            local_ray=env.get("RAY_APP_LOCAL_RAY", "").lower() in ("1", "true", "yes"),
            actor=env.get("RAY_APP_ACTOR") or env.get("GITHUB_ACTOR") or env.get("USER") or "unknown",
            dashboard_url=env.get("RAY_DASHBOARD_ADDRESS") or "http://127.0.0.1:8265",
            prometheus_url=env.get("RAY_APP_PROMETHEUS_URL") or "http://127.0.0.1:9090",
            admin_token=env.get("RAY_APP_ADMIN_TOKEN") or None,
            object_store_mb=int(env["RAY_APP_OBJECT_STORE_MB"]) if env.get("RAY_APP_OBJECT_STORE_MB") else None,
        )

    def ensure(self) -> RuntimePaths:
        """Create the local folders this installation writes to."""
        for folder in (self.home, self.data_dir, self.home / "mlartifacts"):
            folder.mkdir(parents=True, exist_ok=True)
        if "://" not in self.storage_path:
            Path(self.storage_path).mkdir(parents=True, exist_ok=True)
        return self

    @property
    def artifact_root(self) -> str | None:
        """Where new experiments keep artifacts: a folder under `home` for a local store; a tracking server
        (several nodes, pods) uses its own artifact root, which every node can reach."""
        if self.tracking_uri.split(":", 1)[0] in ("http", "https", "databricks"):
            return None
        return (self.home / "mlartifacts").as_uri()
