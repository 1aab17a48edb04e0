"""Feature attributions: Integrated Gradients (Sundararajan et al., 2017) of a bundle's network, from the encoded
baseline of all zeros (every numeric feature at its training mean, no category), summed back to raw features: a
categorical feature's one-hot columns and a numeric feature's missing indicator count for that feature.

For classification the attributed output is the probability of the class the model predicts for the row; for
regression, the prediction in the label's units. Per row, the attributions add up to that output minus the
baseline's (up to the Riemann error of `steps`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ray_app.data.preprocess import fitted_stats
from ray_app.package import ModelBundle

STEPS = 32
GLOBAL_ROWS = 500  # rows behind a version's global attributions


def feature_columns(bundle: ModelBundle) -> list[tuple[str, list[int]]]:
    """Each raw feature and the encoded columns it owns, in the preprocessor's order: numeric features, their
    missing indicators, then each categorical feature's one-hot block."""
    stats = fitted_stats(bundle.preprocessor)
    schema = bundle.schema
    owners = [*schema.numeric, *(name for name in schema.numeric if name in schema.nullable)]
    for name in schema.categorical:
        owners += [name] * len(stats.get(f"unique_values({name})", {}))
    if len(owners) != bundle.mlp.in_features:
        raise ValueError(f"{len(owners)} encoded columns from the schema, the network reads "
                         f"{bundle.mlp.in_features}")  # a bundle whose schema and network disagree: a bug
    return [(name, [j for j, owner in enumerate(owners) if owner == name]) for name in schema.features]


def integrated_gradients(bundle: ModelBundle, rows: pd.DataFrame, steps: int = STEPS) -> np.ndarray:
    """(rows, raw features) attributions of each row's output (see the module's docstring)."""
    x = torch.from_numpy(bundle.encode(rows.reset_index(drop=True)))
    baseline = torch.zeros_like(x)
    model = bundle.model
    classes = bundle.target.classes
    with torch.no_grad():
        chosen = model(x).argmax(dim=1) if classes is not None else None
    total = torch.zeros_like(x)
    for alpha in (torch.arange(steps, dtype=torch.float32) + 0.5) / steps:  # midpoint rule
        point = (baseline + alpha * (x - baseline)).requires_grad_(True)
        out = model(point)
        if classes is not None:
            value = torch.softmax(out, dim=1).gather(1, chosen.unsqueeze(1)).squeeze(1)
        else:
            value = out.reshape(len(point), -1)[:, 0] * float(bundle.target.std)  # one output: (rows,) or (rows, 1)
        total += torch.autograd.grad(value.sum(), point)[0]
    encoded = ((x - baseline) * total / steps).numpy()
    return np.stack([encoded[:, columns].sum(axis=1) for _, columns in feature_columns(bundle)], axis=1)


def global_attributions(bundle: ModelBundle, rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Mean absolute attribution per raw feature over a seeded sample of at most GLOBAL_ROWS rows, and its share
    of the total, largest first."""
    sample = rows.sample(n=min(GLOBAL_ROWS, len(rows)), random_state=seed) if len(rows) else rows
    values = np.abs(integrated_gradients(bundle, sample)).mean(axis=0)
    total = values.sum() or 1.0
    table = pd.DataFrame({"feature": bundle.schema.features, "mean_abs_attribution": values,
                          "share": values / total})
    return table.sort_values("mean_abs_attribution", ascending=False, ignore_index=True)
