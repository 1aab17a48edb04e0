"""Test doubles shipped to Serve replicas by value (cloudpickle), since replicas cannot import `tests`."""

import time

from ray_app.package import ModelBundle
from ray_app.registry import ModelRef


class MisbehavingLoader:
    """Loads a real bundle folder whose `score` (what a variant calls) then fails (`mode="fail"`) or takes seconds
    (`mode="slow"`)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, model_uri: str):
        bundle = ModelBundle.load(model_uri)
        real_score, mode = bundle.score, self.mode

        def score(numeric, categorical):
            if mode == "fail":
                raise RuntimeError("shadow model is broken")
            time.sleep(2.0)
            return real_score(numeric, categorical)

        bundle.score = score
        return bundle, ModelRef(name=f"{mode}-shadow", version="0", run_id=None)
