"""Training/serving skew statistics and their drift thresholds: pure pandas/numpy/scipy, no Dagster.

`skew_report` compares, feature by feature, a training sample with a serving sample and grades each
feature ok / warn / error against `DriftThresholds`. Numeric features (int64, float64 and bool as 0/1)
get the relative mean shift, PSI on bins fixed by the training data and the two-sample KS statistic;
categorical features (string) get PSI over the union of categories and the largest change of a
category's share; every feature gets its null-rate change. A statistic that cannot be computed (a side
without non-null values) is NaN and never triggers a threshold; the `notes` column says why it is NaN.

`histogram_markdown` renders one feature's training and serving shares as a small PNG embedded in
Markdown, the form Dagster's asset metadata displays as an image.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Protocol, TypedDict, cast

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from feature_assets.errors import ConfigError, DataError

__all__ = [
    "MIN_ENTITIES_FOR_PSI",
    "PSI_EPSILON",
    "REPORT_COLUMNS",
    "SEVERITIES",
    "DriftThresholds",
    "categorical_psi",
    "category_shares",
    "drift_severity",
    "feature_kind",
    "numeric_psi",
    "numeric_values",
    "relative_mean_shift",
    "skew_report",
    "worst_severity",
]

# Share given to a bin that one side leaves empty: a category seen only in serving then adds
# share * ln(share / 1e-4) (0.69 for a 10% share) instead of making PSI infinite.
PSI_EPSILON = 1e-4

SEVERITIES = ("ok", "warn", "error")
MIN_ENTITIES_FOR_PSI = 30

REPORT_COLUMNS = (
    "feature",
    "dtype",
    "kind",
    "training_rows",
    "serving_rows",
    "training_null_rate",
    "serving_null_rate",
    "null_rate_change",
    "training_mean",
    "serving_mean",
    "mean_shift",
    "psi",
    "ks",
    "largest_frequency_change",
    "largest_change_category",
    "severity",
    "reasons",
    "notes",
)

_KINDS = {"int64": "numeric", "float64": "numeric", "bool": "numeric", "string": "categorical"}

_THRESHOLD_NAMES = ("warn_mean_shift", "warn_psi", "error_psi", "error_null_rate_change")


class _Thresholds(TypedDict, total=False):
    """Some of the thresholds by name (_THRESHOLD_NAMES), as DriftThresholds takes them."""

    warn_mean_shift: float
    warn_psi: float
    error_psi: float
    error_null_rate_change: float


class _NamedFeature(Protocol):
    """A feature as skew_report takes it besides a (name, dtype) pair, e.g. the registry's Feature."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature's drift is a warning or an error; `overrides` holds per-feature thresholds.

    A threshold of `math.inf` switches that rule off. Crossing means `statistic >= threshold`.
    """

    warn_mean_shift: float = 0.10  # relative mean shift, see relative_mean_shift
    warn_psi: float = 0.10
    error_psi: float = 0.25
    error_null_rate_change: float = 0.05  # absolute change of the null rate (0.05 = 5 points)
    overrides: Mapping[str, "DriftThresholds"] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in _THRESHOLD_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ConfigError(
                    f"drift threshold {name} must be a number >= 0 (math.inf turns it off), got {value!r}"
                )
        if self.warn_psi > self.error_psi:
            raise ConfigError(f"drift threshold warn_psi ({self.warn_psi}) is above error_psi ({self.error_psi})")
        for feature, override in self.overrides.items():
            if not isinstance(override, DriftThresholds):
                raise ConfigError(
                    f"drift thresholds override for {feature!r} must be DriftThresholds, got {type(override).__name__}"
                )
            if override.overrides:
                raise ConfigError(f"drift thresholds override for {feature!r} has overrides of its own")
        # A read-only copy: the caller's dict changing later must not change a frozen value.
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def for_feature(self, name: str) -> "DriftThresholds":
        """The thresholds that apply to feature `name`: its override, else these defaults."""
        return self.overrides.get(name, self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "DriftThresholds":
        """Builds thresholds from plain configuration, e.g. a Dagster run config or YAML:

            {"warn_psi": 0.1, "error_psi": 0.25,
             "features": {"age": {"error_psi": 0.5}, "country": {"error_null_rate_change": 0.1}}}

        Top-level keys override the defaults; a feature's keys override the top level for that feature.
        """
        config = dict(config or {})
        per_feature = config.pop("features", None) or {}
        unknown = set(config) - set(_THRESHOLD_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown drift threshold(s) {sorted(unknown)}; known: {list(_THRESHOLD_NAMES)} and 'features'"
            )
        # The keys are threshold names (checked above): a _Thresholds.
        base = cls(**cast(_Thresholds, {name: float(value) for name, value in config.items()}))
        overrides = {}
        for feature, values in per_feature.items():
            unknown = set(values) - set(_THRESHOLD_NAMES)
            if unknown:
                raise ConfigError(f"unknown drift threshold(s) {sorted(unknown)} for feature {feature!r}")
            overrides[feature] = replace(
                base, **cast(_Thresholds, {name: float(value) for name, value in values.items()})
            )
        return replace(base, overrides=overrides)

    def as_dict(self) -> dict[str, float]:
        """The four thresholds (without overrides), e.g. for check metadata."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in _THRESHOLD_NAMES}


def feature_kind(dtype: str) -> str:
    """'numeric' for int64, float64 and bool; 'categorical' for string."""
    try:
        return _KINDS[dtype]
    except KeyError:
        raise ConfigError(f"unknown feature dtype {dtype!r}; known: {sorted(_KINDS)}") from None


# ---------------------------------------------------------------------------------------------------
# Statistics on plain arrays (non-null values only)


def relative_mean_shift(training: np.ndarray, serving: np.ndarray) -> float:
    """|mean(serving) - mean(training)| / max(|mean(training)|, std(training)).

    Scaling by the training standard deviation as well keeps the ratio meaningful when the training
    mean is zero or tiny (it is then the shift in standard deviations). 0 when both sides are constant
    and equal, inf when the training side is constant at 0 and the means differ, NaN when a side has
    no values.
    """
    if len(training) == 0 or len(serving) == 0:
        return math.nan
    training_mean = float(np.mean(training))
    difference = abs(float(np.mean(serving)) - training_mean)
    denominator = max(abs(training_mean), float(np.std(training)))
    if denominator == 0:
        return 0.0 if difference == 0 else math.inf
    return difference / denominator


def _psi(training_shares: np.ndarray, serving_shares: np.ndarray) -> float:
    t = np.maximum(training_shares, PSI_EPSILON)
    s = np.maximum(serving_shares, PSI_EPSILON)
    return float(np.sum((s - t) * np.log(s / t)))


def _training_cuts(training: np.ndarray, bins: int) -> np.ndarray:
    return np.unique(np.quantile(training, np.linspace(0, 1, bins + 1)[1:-1]))


def _bin_index(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    # For cuts c0 < ... < ck the bins are: below c0, exactly c0, between c0 and c1, exactly c1, ...,
    # exactly ck, above ck (2k + 3 bins). The outer bins are open-ended, so serving values outside the
    # training range count; the exact-value bins keep point masses (bool, counts, a constant) apart
    # from their neighbours even when quantiles tie. Bins empty on both sides add exactly 0 to PSI.
    return np.searchsorted(cuts, values, side="left") + np.searchsorted(cuts, values, side="right")


def numeric_psi(training: np.ndarray, serving: np.ndarray, bins: int = 10) -> float:
    """PSI on bins fixed by the training data: its `bins`-quantile cut points, deduplicated."""
    if len(training) == 0 or len(serving) == 0:
        return math.nan
    cuts = _training_cuts(training, bins)
    size = 2 * len(cuts) + 1
    training_shares = np.bincount(_bin_index(training, cuts), minlength=size) / len(training)
    serving_shares = np.bincount(_bin_index(serving, cuts), minlength=size) / len(serving)
    return _psi(training_shares, serving_shares)


def category_shares(training: pd.Series, serving: pd.Series) -> pd.DataFrame:
    """Shares of each category (non-null values), over the union of both sides' categories."""
    counts = pd.concat(
        {"training": training.value_counts(dropna=True), "serving": serving.value_counts(dropna=True)}, axis=1
    ).fillna(0)
    shares = counts / counts.sum()
    shares.index = shares.index.astype(str)
    return shares.sort_index()


def categorical_psi(training: pd.Series, serving: pd.Series) -> float:
    """PSI over the union of categories; a category seen only on one side counts with PSI_EPSILON."""
    if training.count() == 0 or serving.count() == 0:
        return math.nan
    shares = category_shares(training, serving)
    return _psi(shares["training"].to_numpy(float), shares["serving"].to_numpy(float))


def drift_severity(
    thresholds: DriftThresholds,
    *,
    mean_shift: float = math.nan,
    psi: float = math.nan,
    null_rate_change: float = math.nan,
) -> tuple[str, list[str]]:
    """('ok' | 'warn' | 'error', reasons). Error: psi >= error_psi or |null-rate change| >=
    error_null_rate_change. Else warn: mean_shift >= warn_mean_shift or psi >= warn_psi. NaN never
    triggers. Reasons name each crossed threshold with its numbers, errors first.
    """
    errors, warnings = [], []
    if psi >= thresholds.error_psi:
        errors.append(f"psi {_fmt(psi)} >= {_fmt(thresholds.error_psi)}")
    elif psi >= thresholds.warn_psi:
        warnings.append(f"psi {_fmt(psi)} >= {_fmt(thresholds.warn_psi)}")
    if abs(null_rate_change) >= thresholds.error_null_rate_change:
        errors.append(
            f"null rate change {null_rate_change:+.3g}, |change| >= {_fmt(thresholds.error_null_rate_change)}"
        )
    if mean_shift >= thresholds.warn_mean_shift:
        warnings.append(f"mean shift {_fmt(mean_shift)} >= {_fmt(thresholds.warn_mean_shift)}")
    severity = "error" if errors else "warn" if warnings else "ok"
    return severity, errors + warnings


def worst_severity(report: pd.DataFrame) -> str:
    """The most severe grade in a report ('ok' for an empty one)."""
    ranks = report["severity"].map(SEVERITIES.index) if len(report) else pd.Series([0])
    return SEVERITIES[int(ranks.max())]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# ---------------------------------------------------------------------------------------------------
# The report


def _column(frame: pd.DataFrame, feature: str, side: str) -> pd.Series:
    if feature in frame.columns:
        return frame[feature]
    if len(frame) == 0:
        return pd.Series([], dtype=object)
    raise DataError(f"the {side} frame has no column {feature!r}")


def numeric_values(series: pd.Series, feature: str, side: str) -> np.ndarray:
    """All values as float64 with NaN for nulls (bool as 0/1)."""
    try:
        numeric = pd.to_numeric(series)
    except (ValueError, TypeError) as error:
        raise DataError(f"numeric feature {feature!r} has a non-numeric value in the {side} data: {error}") from None
    return numeric.to_numpy(dtype=np.float64, na_value=np.nan)


def _feature_row(
    name: str,
    dtype: str,
    training: pd.Series,
    serving: pd.Series,
    thresholds: DriftThresholds,
    bins: int,
    grade_psi: bool,
) -> dict[str, Any]:
    kind = feature_kind(dtype)
    row: dict[str, Any] = dict.fromkeys(REPORT_COLUMNS, math.nan)
    row.update(
        feature=name,
        dtype=dtype,
        kind=kind,
        training_rows=len(training),
        serving_rows=len(serving),
        largest_change_category=None,
    )
    notes = []
    if kind == "numeric":
        t_all, s_all = numeric_values(training, name, "training"), numeric_values(serving, name, "serving")
        t, s = t_all[~np.isnan(t_all)], s_all[~np.isnan(s_all)]
        t_nulls, s_nulls = len(t_all) - len(t), len(s_all) - len(s)
        if len(t):
            row["training_mean"] = float(np.mean(t))
            if np.ptp(t) == 0:
                notes.append("constant in training")
        if len(s):
            row["serving_mean"] = float(np.mean(s))
        row["mean_shift"] = relative_mean_shift(t, s)
        row["psi"] = numeric_psi(t, s, bins)
        if len(t) and len(s):
            row["ks"] = float(
                ks_2samp(t, s, method="asymp").statistic
            )  # the statistic alone; "asymp" skips an exact p-value
    else:
        t_cat, s_cat = training.astype("string"), serving.astype("string")
        t_nulls, s_nulls = int(t_cat.isna().sum()), int(s_cat.isna().sum())
        t_count, s_count = len(t_cat) - t_nulls, len(s_cat) - s_nulls
        if t_count and s_count:
            shares = category_shares(t_cat, s_cat)
            row["psi"] = _psi(shares["training"].to_numpy(float), shares["serving"].to_numpy(float))
            change = (shares["serving"] - shares["training"]).abs()
            row["largest_change_category"] = str(change.idxmax())  # first in sorted order on ties
            row["largest_frequency_change"] = float(change.max())
            unseen = shares.index[shares["training"] == 0]
            if len(unseen):
                notes.append(f"{len(unseen)} categor{'y' if len(unseen) == 1 else 'ies'} unseen in training")
    t_has_values = len(training) - t_nulls > 0
    s_has_values = len(serving) - s_nulls > 0
    for side, rows, has_values in (("training", len(training), t_has_values), ("serving", len(serving), s_has_values)):
        if rows == 0:
            notes.append(f"no {side} rows")
        elif not has_values:
            notes.append(f"all null in {side}")
    if len(training):
        row["training_null_rate"] = t_nulls / len(training)
    if len(serving):
        row["serving_null_rate"] = s_nulls / len(serving)
    row["null_rate_change"] = row["serving_null_rate"] - row["training_null_rate"]
    row["severity"], reasons = drift_severity(
        thresholds.for_feature(name),
        mean_shift=row["mean_shift"],
        psi=row["psi"] if grade_psi else math.nan,
        null_rate_change=row["null_rate_change"],
    )
    row["reasons"] = "; ".join(reasons)
    row["notes"] = "; ".join(notes)
    return row


def skew_report(
    training: pd.DataFrame,
    serving: pd.DataFrame,
    features: Sequence[tuple[str, str] | _NamedFeature],
    thresholds: DriftThresholds = DriftThresholds(),
    bins: int = 10,
    serving_entities: int | None = None,
) -> pd.DataFrame:
    """One row per feature (in the given order) comparing `training` with `serving`; see REPORT_COLUMNS.

    serving_entities: how many distinct entities the serving rows come from. Below MIN_ENTITIES_FOR_PSI (a view
    of a few countries, say) the serving side is a handful of point masses whose PSI against a history is large
    whatever happens, so PSI is reported but not graded (a note says so); mean shift and null rates still are.

    `features` holds (name, dtype) pairs, or objects with `.name` and `.dtype` such as the registry's
    Feature. `bins` is the number of training quantile bins for numeric PSI. A frame without rows may
    lack the feature columns; a frame with rows must have them (DataError).
    """
    if bins < 2:
        raise ConfigError(f"skew report bins must be at least 2, got {bins}")
    pairs = [f if isinstance(f, tuple) else (f.name, f.dtype) for f in features]
    grade_psi = serving_entities is None or serving_entities >= MIN_ENTITIES_FOR_PSI
    rows = [
        _feature_row(
            name,
            dtype,
            _column(training, name, "training"),
            _column(serving, name, "serving"),
            thresholds,
            bins,
            grade_psi,
        )
        for name, dtype in pairs
    ]
    if not grade_psi:
        note = f"PSI not graded: only {serving_entities} distinct entities served"
        for row in rows:
            row["notes"] = "; ".join(filter(None, [row["notes"], note]))
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    # "str" keeps the category column's missing value NaN whether or not the report has a categorical feature.
    return report.astype({"training_rows": "int64", "serving_rows": "int64", "largest_change_category": "str"})
