"""Real HTTP against a real Serve app of the registered model: parity, bad input, loader injection, batch scoring."""

import httpx
import numpy as np
import pandas as pd
import pytest
from ray import serve

from ray_app.cli import main
from ray_app.config import ServeSettings
from ray_app.registry import ModelRegistry
from ray_app.serve.app import VariantArgs, variant_app
from ray_app.serve.variant import BundleDirLoader
from tests.conftest import SERVE_PORT

pytestmark = pytest.mark.timeout(300)
BASE = f"http://127.0.0.1:{SERVE_PORT}"


@pytest.fixture(scope="module")
def champion_bundle(champion, paths):
    bundle, _ = ModelRegistry(paths.tracking_uri).load_bundle(f"models:/{champion.model.name}@champion")
    return bundle


@pytest.fixture(scope="module")
def sample_rows(champion_bundle) -> pd.DataFrame:
    frame = pd.read_parquet(champion_bundle.dataset_version["files"][0])
    return frame.sample(40, random_state=0)[champion_bundle.schema.features].reset_index(drop=True)


@pytest.fixture(scope="module")
def served(champion, paths):
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    args = VariantArgs(model_uri=f"models:/{champion.model.name}@champion", tracking_uri=paths.tracking_uri,
                       variant="champion", serve=ServeSettings(max_rows=100))
    serve.run(variant_app(args), name="test-single", route_prefix="/single")
    yield f"{BASE}/single"
    serve.delete("test-single")


def test_served_predictions_equal_in_process_bundle(served, champion_bundle, sample_rows):
    response = httpx.post(f"{served}/predict", json={"instances": sample_rows.to_dict("records")}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = champion_bundle.predict(sample_rows)
    assert body["predictions"] == expected["predictions"]
    np.testing.assert_allclose(body["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6)
    assert body["model"].startswith("models:/") and body["variant"] == "champion"


def test_explain_gives_one_attribution_per_feature_and_none_to_what_the_label_ignores(served, champion_bundle,
                                                                                      sample_rows):
    response = httpx.post(f"{served}/explain", json={"instances": sample_rows.to_dict("records")}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    features = champion_bundle.schema.features
    assert body["features"] == features and body["method"] == "integrated gradients"
    assert body["predictions"] == champion_bundle.predict(sample_rows)["predictions"]
    assert len(body["attributions"]) == len(sample_rows) and all(list(row) == features for row in body["attributions"])
    mean_abs = {f: np.mean([abs(row[f]) for row in body["attributions"]]) for f in features}
    assert mean_abs["x5"] < 0.2 * mean_abs["x0"], mean_abs  # the synthetic label never reads x5
    refused = httpx.post(f"{served}/explain", json={"instances": [{**sample_rows.iloc[0].to_dict(), "x0": "a"}]},
                         timeout=30)
    assert refused.status_code == 422 and "x0" in refused.json()["error"]


def test_explain_cli_writes_the_table_and_the_chart(champion, champion_bundle, tmp_path):
    output = tmp_path / "explained"
    code = main(["explain", "--model-uri", champion.model.uri, "--data", champion_bundle.dataset_version["files"][0],
                 "--rows", "300", "--output", str(output)])
    assert code == 0
    table = pd.read_csv(output / "attributions.csv")
    assert set(table["feature"]) == set(champion_bundle.schema.features) and abs(table["share"].sum() - 1) < 1e-6
    shares = dict(zip(table["feature"], table["share"], strict=True))
    assert shares["x5"] < 0.2 * shares["x0"]
    assert (output / "attributions.png").read_bytes()[:4] == b"\x89PNG"


def test_schema_and_health_routes(served, champion_bundle):
    schema = httpx.get(f"{served}/schema", timeout=10).json()
    assert schema["schema"]["numeric"] == champion_bundle.schema.numeric and schema["max_rows"] == 100
    assert httpx.get(f"{served}/healthz", timeout=10).json()["status"] == "ok"


def test_malformed_requests_get_4xx_and_the_replica_keeps_serving(served, sample_rows):
    good = sample_rows.iloc[0].to_dict()
    bad_requests = [
        {"content": b"{oops"},
        {"content": b""},
        {"content": b'{"instances": [{"x0": NaN}]}'},
        {"json": [good]},
        {"json": {"instances": []}},
        {"json": {"instances": ["row"]}},
        {"json": {"instances": [{k: v for k, v in good.items() if k != "x0"}]}},
        {"json": {"instances": [{**good, "surprise": 1}]}},
        {"json": {"instances": [{**good, "x1": "high"}]}},
        {"json": {"instances": [{**good, "segment": [7]}]}},  # an integer code is a category; a list is not
        {"json": {"instances": [{**good, "x2": None}]}},
        {"json": {"instances": [good] * 101}},
    ]
    statuses = []
    for request in bad_requests:
        response = httpx.post(f"{served}/predict", timeout=30, **request)
        statuses.append(response.status_code)
        assert 400 <= response.status_code < 500, (request, response.status_code, response.text)
        assert response.json()["error"], response.text
    assert 413 in statuses and 422 in statuses and 400 in statuses
    assert httpx.get(f"{served}/predict", timeout=10).status_code == 405
    after = httpx.post(f"{served}/predict", json={"instances": [good]}, timeout=30)
    assert after.status_code == 200 and len(after.json()["predictions"]) == 1


def test_variant_takes_an_injected_loader_without_registry(champion_bundle, sample_rows, tmp_path):
    folder = champion_bundle.save(tmp_path / "bundle")
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    app = variant_app(VariantArgs(model_uri=str(folder), variant="local", batching=False), loader=BundleDirLoader())
    serve.run(app, name="test-local", route_prefix="/local")
    try:
        response = httpx.post(f"{BASE}/local/predict", json={"instances": sample_rows.head(3).to_dict("records")},
                              timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == champion_bundle.predict(sample_rows.head(3))["predictions"]
        assert response.json()["model"] == f"models:/{folder}/local"
    finally:
        serve.delete("test-local")


def test_batch_scoring_cli_matches_bundle(champion, champion_bundle, sample_rows, tmp_path):
    source, output = tmp_path / "rows.csv", tmp_path / "scored"
    sample_rows.to_csv(source, index=False)
    code = main(["predict", "--model-uri", f"models:/{champion.model.name}@champion",
                 "--input", str(source), "--output", str(output)])
    assert code == 0
    scored = pd.read_parquet(output)
    merged = scored.merge(sample_rows.assign(expected=champion_bundle.predict(sample_rows)["predictions"]),
                          on=champion_bundle.schema.features)
    assert len(merged) == len(sample_rows) and (merged["prediction"] == merged["expected"]).all()
