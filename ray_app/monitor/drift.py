"""Drift of a window (or a dataset) against the reference, from whylogs sketches.

Numeric features: two-sample Kolmogorov-Smirnov on the CDFs of the two KLL sketches. Categorical features
(and a classifier's predictions): chi-square goodness of fit of the window's counts to the reference shares.
A column's null share is compared too (two-proportion z-test), reported as `<column>__missing`.
All report PSI as the effect size. A feature drifts when its p-value is under alpha / (number of features
tested) (Bonferroni) and its PSI is at least `min_effect`; a window with fewer than `min_rows` rows is not judged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from scipy import stats

from ray_app.config import MonitorConfig
from ray_app.data.preprocess import categories_as_text
from ray_app.data.sources import is_numeric_type
from ray_app.profiles import ProfileReader, profile_dataset, profile_frame

GRID = list(np.linspace(0.0, 1.0, 101))
PSI_BINS = [i / 10 for i in range(1, 10)]
EPS = 1e-4
PREDICTION = "prediction"


class StreamSchema(BaseModel):
    """What the monitor needs to know of a served model's inputs and output to compare them with its reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    numeric: list[str]
    categorical: list[str]
    label: str | None = None
    regression: bool = False


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    test: str  # ks | chi2
    statistic: float
    p_value: float
    effect_size: float  # PSI
    rows: int
    drifted: bool = False


@dataclass
class DriftReport:
    rows: int
    alpha: float
    min_effect: float
    judged: bool
    features: list[FeatureDrift] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.alpha / max(len(self.features), 1)

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        return {**asdict(self), "threshold": self.threshold, "drifted": self.drifted}

    @classmethod
    def from_dict(cls, data: dict) -> DriftReport:
        """The inverse of `to_dict` (extra keys, such as a stored window's start and end, are ignored)."""
        features = [FeatureDrift(**f) for f in data.get("features", [])]
        return cls(rows=data["rows"], alpha=data["alpha"], min_effect=data["min_effect"], judged=data["judged"],
                   features=features)

    def table(self) -> str:
        lines = [f"rows {self.rows}; p-value threshold {self.threshold:.2g} (alpha {self.alpha} / "
                 f"{len(self.features)} features, Bonferroni); PSI floor {self.min_effect}",
                 "| feature | kind | test | statistic | p-value | PSI | drifted |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {f.feature} | {f.kind} | {f.test} | {f.statistic:.4f} | {f.p_value:.3g} | {f.effect_size:.4f} | "
                  f"{'YES' if f.drifted else 'no'} |" for f in self.features]
        return "\n".join(lines)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    e, a = np.clip(expected, EPS, None), np.clip(actual, EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_drift(ref: ProfileReader, cur: ProfileReader, ref_col: str, cur_col: str) -> FeatureDrift | None:
    ref_q, cur_q = ref.quantiles(ref_col, GRID), cur.quantiles(cur_col, GRID)
    if ref_q is None or cur_q is None:
        return None
    points = sorted(set(ref_q) | set(cur_q))
    distance = float(np.max(np.abs(np.array(ref.cdf(ref_col, points)) - np.array(cur.cdf(cur_col, points)))))
    n, m = ref.rows(ref_col), cur.rows(cur_col)
    p_value = float(stats.kstwo.sf(distance, max(1, round(n * m / (n + m)))))
    edges = sorted(set(ref.quantiles(ref_col, PSI_BINS)))
    shares = [np.diff([0.0, *r.cdf(c, edges), 1.0]) for r, c in ((ref, ref_col), (cur, cur_col))]
    return FeatureDrift(cur_col, "numeric", "ks", distance, p_value, psi(*shares), m)


def categorical_drift(ref: ProfileReader, cur: ProfileReader, ref_col: str, cur_col: str) -> FeatureDrift | None:
    ref_counts, cur_counts = ref.counts(ref_col), cur.counts(cur_col)
    if not ref_counts or not cur_counts:
        return None
    names = sorted(set(ref_counts) | set(cur_counts))
    expected = np.array([ref_counts.get(k, 0.0) for k in names]) + 0.5  # unseen categories: a pseudo-count
    observed = np.array([cur_counts.get(k, 0.0) for k in names])
    expected = expected / expected.sum() * observed.sum()
    statistic, p_value = stats.chisquare(observed, expected)
    return FeatureDrift(cur_col, "categorical", "chi2", float(statistic), float(p_value), psi(expected, observed),
                        int(observed.sum()))


def null_drift(ref: ProfileReader, cur: ProfileReader, column: str) -> FeatureDrift | None:
    """A shift of a column's null share: two-proportion z-test, PSI over (null, present). Reported as the
    column's missing indicator, `<column>__missing`; None when neither side has a null."""
    (n0, a0), (n1, a1) = ref.null_counts(column), cur.null_counts(column)
    if not n0 or not n1 or not (a0 or a1):
        return None
    p0, p1, pooled = a0 / n0, a1 / n1, (a0 + a1) / (n0 + n1)
    se = float(np.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1)))
    z = (p1 - p0) / se if se > 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(z)))
    return FeatureDrift(f"{column}__missing", "nulls", "z", float(z), p_value,
                        psi(np.array([p0, 1 - p0]), np.array([p1, 1 - p1])), n1)


def compare_profiles(reference: bytes, current: bytes, numeric: list[str], categorical: list[str],
                     settings: MonitorConfig, label: str | None = None, regression: bool = False) -> DriftReport:
    """Every feature (and `prediction` against the reference's `label`, when both are there) of `current`
    against `reference`."""
    ref, cur = ProfileReader(reference), ProfileReader(current)
    pairs = [(c, c, numeric_drift) for c in numeric] + [(c, c, categorical_drift) for c in categorical]
    if label and label in ref.columns and PREDICTION in cur.columns:
        pairs.append((label, PREDICTION, numeric_drift if regression else categorical_drift))
    rows = max((cur.rows(c) for _, c, _ in pairs if c in cur.columns), default=0)
    report = DriftReport(rows, settings.alpha, settings.min_effect, rows >= settings.min_rows)
    report.features = [d for r, c, test in pairs if c in cur.columns and (d := test(ref, cur, r, c)) is not None]
    report.features += [d for c in [*numeric, *categorical] if c in cur.columns and c in ref.columns
                        and (d := null_drift(ref, cur, c)) is not None]
    if report.judged:
        for f in report.features:
            f.drifted = f.p_value < report.threshold and f.effect_size >= settings.min_effect
    return report


def _as_text(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Categories as text, as training and serving read them; a null stays null."""
    return frame.assign(**{c: categories_as_text(frame[c], missing=None).to_numpy() for c in categorical})


def compare_frames(reference: pd.DataFrame, current: pd.DataFrame, settings: MonitorConfig) -> DriftReport:
    """Offline drift of two datasets: numeric columns by KS, the others by chi-square."""
    columns = [c for c in reference.columns if c in current.columns]
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(reference[c])]
    categorical = [c for c in columns if c not in numeric]
    return compare_profiles(profile_frame(_as_text(reference[columns], categorical)),
                            profile_frame(_as_text(current[columns], categorical)), numeric, categorical, settings)


PLOT_ROWS = 20_000  # rows of each side drawn for the report's histograms (the tests run on the whole profiles)


def compare_datasets(reference, current, settings: MonitorConfig) -> tuple[DriftReport, pd.DataFrame, pd.DataFrame]:
    """Offline drift of two Ray Datasets, each profiled block by block in the cluster and merged: numeric columns
    by KS, the others by chi-square. Returns the report and a seeded sample of each side for its plots."""
    schema = reference.schema()
    types = dict(zip(schema.names, (str(t) for t in schema.types), strict=True))
    columns = [c for c in schema.names if c in set(current.schema().names)]
    numeric = [c for c in columns if is_numeric_type(types[c])]
    categorical = [c for c in columns if c not in numeric]
    profiles = [profile_dataset(ds.select_columns(columns), _as_text, categorical) for ds in (reference, current)]
    report = compare_profiles(*profiles, numeric, categorical, settings)
    samples = [_sample(ds.select_columns(columns)) for ds in (reference, current)]
    return report, *samples


def _sample(ds) -> pd.DataFrame:
    rows = ds.count()
    return (ds if rows <= PLOT_ROWS else ds.random_sample(PLOT_ROWS / rows, seed=0)).to_pandas()


def write_report(report: DriftReport, reference: pd.DataFrame, current: pd.DataFrame, folder: Path) -> list[Path]:
    """report.json, report.md and one PNG per drifted feature (reference vs current)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    (folder / "report.md").write_text(report.table() + "\n")
    written = [folder / "report.json", folder / "report.md"]
    for f in report.features:
        if not f.drifted:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if f.kind == "nulls":
            column = f.feature.removesuffix("__missing")
            shares = [frame[column].isna().mean() for frame in (reference, current)]
            ax.bar(["reference", "current"], shares)
            ax.set_ylabel(f"share of {column} missing")
        elif f.kind == "numeric":
            bins = np.histogram_bin_edges(pd.concat([reference[f.feature], current[f.feature]]).dropna(), 30)
            ax.hist(reference[f.feature].dropna(), bins, alpha=0.5, density=True, label="reference")
            ax.hist(current[f.feature].dropna(), bins, alpha=0.5, density=True, label="current")
        else:
            shares = pd.DataFrame({"reference": reference[f.feature].astype(str).value_counts(normalize=True),
                                   "current": current[f.feature].astype(str).value_counts(normalize=True)})
            shares.fillna(0).plot.bar(ax=ax)
        ax.set_title(f"{f.feature}: {f.test} p={f.p_value:.2g}, PSI={f.effect_size:.3f}")
        if f.kind != "nulls":
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"drift_{f.feature}.png", dpi=80)
        plt.close(fig)
        written.append(folder / f"drift_{f.feature}.png")
    return written
