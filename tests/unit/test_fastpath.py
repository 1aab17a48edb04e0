"""The serving fast path against the slow one it is derived from: the compiled encoder matches the fitted Ray
preprocessor's `transform_batch` bit for bit, the ONNX network matches torch, and a model whose fast path
disagrees (or cannot be compiled) is served by the slow path. No Ray cluster: the preprocessor's fitted
statistics are set from pandas, as `fit` would."""

import numpy as np
import pandas as pd
import pytest
import torch

from ray_app import fastpath
from ray_app.data.preprocess import (
    MISSING,
    TargetEncoding,
    build_preprocessor,
    encode_rows,
    model_columns,
    normalize_rows,
)
from ray_app.data.sources import FeatureSpec
from ray_app.fastpath import UNSEEN, CompiledEncoder
from ray_app.package import FeatureSchema, ModelBundle
from ray_app.train.model import MLPSpec, TabularMLP

NUMERIC, CATEGORICAL = ["x0", "x1", "flat"], ["segment", "tier"]


SPEC = FeatureSpec(label="y", task="classification", numeric=NUMERIC, categorical=CATEGORICAL,
                   nullable=["x1", "tier"])


def fitted_chain(frame: pd.DataFrame, extra_step=None):
    """`build_preprocessor`'s chain with the statistics `fit` would give on `frame` (no Ray Data needed)."""
    from ray.data.preprocessors import Chain, OneHotEncoder, StandardScaler

    normal = normalize_rows(frame, SPEC)
    chain = build_preprocessor(SPEC, {c: float(frame[c].median()) for c in NUMERIC}, max_categories=50)
    filled = normal.fillna({c: float(frame[c].median()) for c in NUMERIC})
    numeric, categorical = model_columns(SPEC)
    for step in chain._preprocessors:
        if isinstance(step, StandardScaler):
            step.stats_ = {f"{stat}({c})": getattr(filled[c], stat)(**({"ddof": 0} if stat == "std" else {}))
                           for c in numeric for stat in ("mean", "std")}
            step._fitted = True
        elif isinstance(step, OneHotEncoder):
            step.stats_ = {f"unique_values({c})": {v: i for i, v in enumerate(sorted(filled[c].unique()))}
                           for c in categorical}
            step._fitted = True
    steps = list(chain._preprocessors)
    return Chain(*steps[:-1], *([extra_step] if extra_step else []), steps[-1])


def training_frame(rows: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x0": rng.normal(3, 2, rows), "x1": rng.integers(-50, 50, rows).astype(float),
                          "flat": np.full(rows, 4.0),  # a constant column: std 0, only centred
                          "segment": rng.choice(["a", "b", "c"], rows), "tier": rng.choice(["gold", "free"], rows)})
    frame.loc[::7, "x1"] = np.nan
    frame.loc[::11, "tier"] = None
    return frame


def serving_rows(rows: int = 2000, seed: int = 1) -> pd.DataFrame:
    """Seen, unseen and missing categories, integers, missing numbers, and numbers up to float32's range."""
    rng = np.random.default_rng(seed)
    extremes = np.array([0.0, -0.0, 1e30, -1e30, 3.4e38, -3.4e38, 1e-40, 7, -7])
    x0 = np.where(rng.random(rows) < 0.2, rng.choice(extremes, rows), rng.normal(3, 2, rows))
    x1 = rng.integers(-10**6, 10**6, rows).astype(float)
    x1[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame({"x0": x0, "x1": x1, "flat": rng.choice([4.0, 5.0, -1e6], rows),
                         "segment": rng.choice(["a", "b", "c", "zz", "", UNSEEN], rows),
                         "tier": rng.choice(np.array(["gold", "free", "GOLD", None], dtype=object), rows)})


def bundle_for(chain, width: int = 16) -> ModelBundle:
    torch.manual_seed(0)
    spec = MLPSpec(in_features=3 + 1 + 3 + 3, out_features=3, width=width, depth=2, dropout=0.0)
    return ModelBundle(mlp=spec, state_dict=TabularMLP(spec).state_dict(), preprocessor_state=chain.serialize(),
                       schema=FeatureSchema(label="y", task="classification", numeric=NUMERIC,
                                            categorical={"segment": ["a", "b", "c"], "tier": ["free", "gold"]},
                                            nullable=SPEC.nullable),
                       target=TargetEncoding("classification", classes=["p", "q", "r"]))


def arrays(rows: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
    """What validation hands a variant: numbers as float64 (NaN where null), categories as sent (None)."""
    return rows[NUMERIC].to_numpy(dtype=np.float64), [rows[c].tolist() for c in CATEGORICAL]


def test_the_compiled_encoder_matches_transform_batch_bit_for_bit():
    chain = fitted_chain(training_frame())
    encoder = CompiledEncoder.from_preprocessor(chain, NUMERIC, CATEGORICAL, SPEC.nullable)
    rows = serving_rows()
    slow = encode_rows(chain, SPEC, rows)
    fast = encoder.encode(*arrays(rows))
    assert fast.dtype == np.float32 and fast.shape == slow.shape == (len(rows), encoder.width)
    assert np.array_equal(fast, slow, equal_nan=True)
    assert np.isfinite(fast).all() or not np.isfinite(slow).all()
    unseen = rows["segment"].isin(["zz", "", UNSEEN]).to_numpy()
    assert not fast[unseen, 4:7].any()  # unseen: all zeros
    assert len(set(fast[rows["x1"].isna().to_numpy(), 1])) == 1  # every missing x1 takes the one imputed value


def test_a_compiled_bundle_scores_as_the_slow_path():
    bundle = bundle_for(fitted_chain(training_frame()))
    assert bundle.compile(tolerance=1e-4).startswith("fast path")
    rows = serving_rows(500)
    fast = bundle.score(*arrays(rows))
    slow = bundle.outputs(rows)
    ok = np.isfinite(slow).all(axis=1)
    np.testing.assert_allclose(fast[ok], slow[ok], rtol=1e-4, atol=1e-5)
    assert bundle.answer(fast[ok])["predictions"] == bundle.answer(slow[ok])["predictions"]


def test_a_preprocessor_step_without_a_compiled_form_is_served_by_the_slow_path():
    from ray.data.preprocessors import Normalizer

    bundle = bundle_for(fitted_chain(training_frame(), extra_step=Normalizer(columns=["x0", "flat"])))
    reason = bundle.compile(tolerance=1e-4)
    assert reason.startswith("slow path") and "Normalizer" in reason
    rows = serving_rows(50)
    np.testing.assert_array_equal(bundle.score(*arrays(rows)), bundle.outputs(rows))


def test_a_fast_path_that_disagrees_is_not_used(monkeypatch):
    real_encode = CompiledEncoder.encode

    def off_by_a_little(self, numeric, categorical):
        out = real_encode(self, numeric, categorical)
        out[:, 0] += 1e-3
        return out

    monkeypatch.setattr(CompiledEncoder, "encode", off_by_a_little)
    bundle = bundle_for(fitted_chain(training_frame()))
    reason = bundle.compile(tolerance=1e-4)
    assert reason.startswith("slow path") and "differs from transform_batch" in reason
    rows = serving_rows(50)
    np.testing.assert_array_equal(bundle.score(*arrays(rows)), bundle.outputs(rows))


def test_an_onnx_network_that_disagrees_is_not_used(monkeypatch):
    class Skewed(fastpath.OnnxNetwork):
        def __call__(self, features):
            return super().__call__(features) * 1.01

    monkeypatch.setattr(fastpath, "OnnxNetwork", Skewed)
    reason = bundle_for(fitted_chain(training_frame())).compile(tolerance=1e-4)
    assert reason.startswith("slow path") and "ONNX network differs" in reason


@pytest.mark.parametrize("rows", [1, 32])
def test_probe_rows_touch_every_category_and_an_unseen_one(rows):
    encoder = CompiledEncoder.from_preprocessor(fitted_chain(training_frame()), NUMERIC, CATEGORICAL,
                                                SPEC.nullable)
    probe = encoder.probe_rows(rows)
    assert set(probe["segment"].dropna()) == {"a", "b", "c", UNSEEN} and probe["segment"].isna().any()
    assert set(probe["tier"].dropna()) == {"free", "gold", MISSING, UNSEEN} and probe["tier"].isna().any()
    assert probe["x1"].isna().any()
    assert probe["x0"].abs().max() > 1e19
