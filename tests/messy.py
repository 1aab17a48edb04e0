"""A table like the ones users bring: nulls in numeric and categorical features, an ID column, a date, an
integer-coded category, a boolean, a constant column and string labels with three classes."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPEC_OVERRIDES = {"label": "plan", "exclude": ["customer_id", "signup_date"], "categorical": ["region", "tier_code"],
                  "numeric": ["age", "income", "visits", "is_member", "constant"]}


def messy_table(rows: int = 3000, seed: int = 0, null_share: float = 0.05) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, rows).round()
    income = rng.lognormal(10, 0.5, rows)
    visits = rng.poisson(3, rows).astype("int64")
    region = rng.choice(["north", "south", "east", "west"], rows)
    tier_code = rng.choice([1, 2, 3], rows, p=[0.5, 0.3, 0.2])
    is_member = rng.random(rows) < 0.4
    score = (0.05 * (age - 40) + 0.8 * (tier_code - 2) + 1.2 * is_member + 0.3 * (region == "north")
             + rng.normal(0, 0.5, rows))
    plan = np.where(score > 0.8, "premium", np.where(score > -0.3, "standard", "basic"))
    frame = pd.DataFrame({
        "customer_id": [f"c{i:07d}" for i in range(rows)],
        "signup_date": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 700, rows), unit="D"),
        "age": age, "income": income, "visits": visits, "is_member": is_member,
        "region": region, "tier_code": tier_code, "constant": 1.0, "plan": plan,
    })
    holes = rng.random((rows, 2)) < null_share
    frame.loc[holes[:, 0], "age"] = np.nan
    frame["region"] = frame["region"].where(~holes[:, 1], None)
    frame.loc[rng.random(rows) < null_share, "income"] = np.nan
    return frame
