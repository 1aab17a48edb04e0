"""Config: errors name the file and the field; overrides validate; runtime paths resolve from the environment."""

from pathlib import Path

import pytest

from ray_app.cli import load_config
from ray_app.config import ConfigError, ExperimentConfig, RuntimePaths

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_shipped_specs_validate():
    for spec in sorted((ROOT / "tuning").glob("*.yaml")):
        ExperimentConfig.from_yaml(spec)


def test_bad_value_names_file_and_field(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_yaml(path)
    assert str(path) in str(err.value)
    assert "train.epochs" in str(err.value)
    assert "got 0" in str(err.value)


def test_unknown_field_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.widht"):
        ExperimentConfig.from_yaml(write(tmp_path, "model:\n  widht: 3\n"))


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_yaml(write(tmp_path, "train: {use_gpu: maybe}\ndata: {task: clustering}\n"))
    assert "train.use_gpu" in str(err.value) and "data.task" in str(err.value)


def test_not_yaml_and_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        ExperimentConfig.from_yaml(write(tmp_path, "train: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        ExperimentConfig.from_yaml(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        ExperimentConfig.from_yaml(tmp_path / "absent.yaml")


def test_cli_overrides_apply_and_validate():
    cfg = load_config(None, ["train.epochs=3", "data.source=breast_cancer", "train.use_gpu=true"])
    assert (cfg.train.epochs, cfg.data.source, cfg.train.use_gpu) == (3, "breast_cancer", True)
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=-1"])
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["epochs=3"])
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(None, ["trian.epochs=3"])


def test_runtime_paths_from_environment(tmp_path):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)})
    assert paths.home == tmp_path.resolve()
    assert paths.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert paths.storage_path == str(tmp_path.resolve() / "ray_results")
    assert paths.ray_address is None
    custom = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                                   "RAY_APP_STORAGE": "s3://bucket/runs", "RAY_ADDRESS": "127.0.0.1:6379"})
    assert (custom.tracking_uri, custom.storage_path, custom.ray_address) == (
        "http://127.0.0.1:5000", "s3://bucket/runs", "127.0.0.1:6379")
    # a local store keeps artifacts under home; a tracking server (a cluster's pods) keeps its own artifact root
    assert paths.artifact_root == (tmp_path.resolve() / "mlartifacts").as_uri() and custom.artifact_root is None
