"""A real-world table through the whole flow: nulls in numeric and categorical features, an ID column (excluded), a
date (refused until excluded), an integer-coded category, a boolean, a constant column and three string classes.
`ray-app pipeline` promotes it; the served model takes nulls where training had them and refuses them elsewhere;
`ray-app drift` flags a jump in one column's null share."""

import json
import re
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from ray import serve

from ray_app.registry import ModelRegistry
from ray_app.serve.app import VariantArgs, variant_app
from tests.conftest import BIN, SERVE_PORT
from tests.messy import messy_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MODEL = "messy-model"


@pytest.fixture(scope="module")
def promoted(ray_cluster, paths, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("messy")
    table = folder / "customers.parquet"
    messy_table(3000).to_parquet(table, index=False)
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "messy",
        "data": {"source": str(table), "label": "plan", "exclude": ["customer_id", "signup_date"],
                 "categorical": ["region", "tier_code"]},
        "model": {"width": 32, "depth": 2, "dropout": 0.0},
        "train": {"num_workers": 1, "epochs": 6, "batch_size": 64, "lr": 0.01, "cpus_per_worker": 1},
        "registry": {"experiment": "messy", "model_name": MODEL},
        "gate": {"floors": {"accuracy": 0.6, "roc_auc": 0.75},
                 "data": {"min_rows": 500, "max_null_fraction": 0.1}},
    }))
    done = subprocess.run([str(BIN / "ray-app"), "pipeline", "--spec", str(spec)], env=ray_cluster["env"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "feature 'constant' is constant in the train split: dropped" in done.stderr
    assert "pipeline: PROMOTED" in done.stdout, done.stdout[-3000:]
    # The quiet console: the stage's own lines and one progress line per epoch; Ray's and the workers' output in
    # the log file it names
    console = done.stdout + done.stderr
    assert len(console.splitlines()) <= 50 and "[##########] 6/6 train_loss" in done.stdout, console
    log_file = Path(re.search(r"^\[logs\] (\S+)", done.stderr, re.M).group(1))
    assert "RayTrainWorker" in log_file.read_text() and "RayTrainWorker" not in console
    bundle, ref = ModelRegistry(paths.tracking_uri).load_bundle(f"models:/{MODEL}@champion")
    return {"table": table, "bundle": bundle, "ref": ref, "folder": folder, "stdout": done.stdout}


def test_the_model_knows_its_nullable_boolean_and_coded_features(promoted):
    schema = promoted["bundle"].schema
    assert schema.numeric == ["age", "income", "visits", "is_member"]  # constant dropped, ID and date excluded
    assert sorted(schema.nullable) == ["age", "income", "region"] and schema.boolean == ["is_member"]
    assert schema.categorical == {"region": ["east", "north", "south", "west"], "tier_code": ["1", "2", "3"]}
    assert promoted["bundle"].target.classes == ["basic", "premium", "standard"]
    assert "holdout {'accuracy'" in promoted["stdout"]
    assert "floor roc_auc (one-vs-rest, macro)" in promoted["stdout"]  # three classes: the gate says how it averages


def test_served_rows_with_nulls_where_training_had_them(promoted, paths):
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    app = variant_app(VariantArgs(model_uri=f"models:/{MODEL}@champion", tracking_uri=paths.tracking_uri,
                                  variant="messy"))
    serve.run(app, name="messy", route_prefix="/messy")
    try:
        url = f"http://127.0.0.1:{SERVE_PORT}/messy/predict"
        row = {"age": 51, "income": 30000.0, "visits": 2, "is_member": True, "region": "north", "tier_code": 3}
        holes = [{**row, "age": None}, {**row, "income": None, "region": None}, {**row, "tier_code": "2"}, row]
        answer = httpx.post(url, json={"instances": holes}, timeout=60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["predictions"]) == 4 and set(body["predictions"]) <= {"basic", "premium", "standard"}
        assert np.isfinite(np.array(body["probabilities"])).all()
        import pandas as pd

        expected = promoted["bundle"].predict(pd.DataFrame(holes).astype({"tier_code": str}))
        np.testing.assert_allclose(body["probabilities"], expected["probabilities"], rtol=1e-4, atol=1e-5)
        for field in ("visits", "tier_code"):
            refused = httpx.post(url, json={"instances": [{**row, field: None}]}, timeout=60)
            assert refused.status_code == 422 and f"field {field!r}: null is not allowed" in refused.json()["error"]
    finally:
        serve.delete("messy")


def test_drift_flags_a_jump_in_one_columns_null_share(promoted, ray_cluster):
    current = promoted["folder"] / "later.parquet"
    later = messy_table(1500, seed=9)
    later.loc[later.index % 3 == 0, "income"] = np.nan  # ~5% missing in training, 33% now
    later.to_parquet(current, index=False)
    report = promoted["folder"] / "drift"
    done = subprocess.run([str(BIN / "ray-app"), "drift", "--reference", str(promoted["table"]), "--current",
                           str(current), "--output", str(report)], env=ray_cluster["env"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    drifted = json.loads((report / "report.json").read_text())["drifted"]
    assert "income__missing" in drifted and "age__missing" not in drifted, drifted
