"""Skew statistics and drift thresholds on generated samples with known distributions (pure functions)."""

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest

from feature_assets.errors import ConfigError, DataError
from feature_assets.registry import Feature
from feature_assets.skew import (
    PSI_EPSILON,
    REPORT_COLUMNS,
    DriftThresholds,
    categorical_psi,
    drift_severity,
    numeric_psi,
    relative_mean_shift,
    skew_report,
    worst_severity,
)
from feature_assets.skew_histograms import histogram_markdown, histogram_sparkline

FEATURES = [
    ("events_30d", "int64"),  # a count, Poisson(30)
    ("balance_delta", "float64"),  # zero mean, symmetric
    ("spend_90d", "float64"),  # wide: standard deviation equal to the mean
    ("is_active", "bool"),
    ("plan", "string"),
]
N = 5_000


def users(seed: int, n: int = N, plan_shares: tuple[float, float, float] = (0.6, 0.3, 0.1)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "events_30d": rng.poisson(30, n).astype("int64"),
            "balance_delta": rng.normal(0.0, 50.0, n),
            "spend_90d": rng.exponential(100.0, n),
            "is_active": rng.random(n) < 0.3,
            "plan": pd.Series(rng.choice(["free", "basic", "pro"], n, p=plan_shares), dtype="string"),
        }
    )


def exact_mix(counts: dict[str, int], seed: int = 0) -> pd.Series:
    values = np.repeat(list(counts), list(counts.values()))
    return pd.Series(np.random.default_rng(seed).permutation(values), dtype="string")


def by_feature(report: pd.DataFrame) -> pd.DataFrame:
    return report.set_index("feature")


def psi_by_hand(training_shares: list[float], serving_shares: list[float]) -> float:
    t = np.maximum(training_shares, PSI_EPSILON)
    s = np.maximum(serving_shares, PSI_EPSILON)
    return float(np.sum((s - t) * np.log(s / t)))


# ---------------------------------------------------------------------------------------------------
# No drift and injected drift


def test_two_samples_of_one_distribution_are_ok_for_every_feature() -> None:
    report = skew_report(users(seed=1), users(seed=2), FEATURES)

    assert list(report.columns) == list(REPORT_COLUMNS)
    assert report["feature"].tolist() == [name for name, _ in FEATURES]
    assert report["kind"].tolist() == ["numeric", "numeric", "numeric", "numeric", "categorical"]
    assert report["severity"].tolist() == ["ok"] * len(FEATURES), report[["feature", "mean_shift", "psi", "reasons"]]
    assert (report["reasons"] == "").all()
    assert (report["psi"] < 0.02).all()
    assert (report["null_rate_change"] == 0).all()
    assert worst_severity(report) == "ok"


def test_a_count_feature_scaled_by_thirty_percent_is_an_error_for_exactly_that_feature() -> None:
    training, serving = users(seed=1), users(seed=2)
    serving["events_30d"] = training["events_30d"] * 1.3

    report = by_feature(skew_report(training, serving, FEATURES))

    drifted = report.loc["events_30d"]
    assert drifted["severity"] == "error"
    assert drifted["psi"] >= 0.25
    assert drifted["mean_shift"] == pytest.approx(0.3)
    assert drifted["ks"] > 0.3
    assert drifted["reasons"].startswith(f"psi {drifted['psi']:.3g} >= 0.25")
    assert "mean shift 0.3 >= 0.1" in drifted["reasons"]
    assert (report.drop(index="events_30d")["severity"] == "ok").all()
    assert worst_severity(report) == "error"


def test_a_plan_mix_change_is_an_error_naming_the_plan_and_the_category_that_moved_most() -> None:
    training = users(seed=1)
    training["plan"] = exact_mix({"free": 3_000, "basic": 1_500, "pro": 500})  # 60/30/10
    serving = users(seed=2)
    serving["plan"] = exact_mix({"free": 1_500, "basic": 1_500, "pro": 2_000})  # 30/30/40

    report = by_feature(skew_report(training, serving, FEATURES))

    plan = report.loc["plan"]
    assert plan["severity"] == "error"
    assert plan["psi"] == pytest.approx(psi_by_hand([0.6, 0.3, 0.1], [0.3, 0.3, 0.4]))  # 0.624
    assert plan["largest_change_category"] == "pro"
    assert plan["largest_frequency_change"] == pytest.approx(0.3)
    assert math.isnan(plan["mean_shift"]) and math.isnan(plan["ks"])
    assert (report.drop(index="plan")["severity"] == "ok").all()


def test_a_serving_category_never_seen_in_training_counts_in_the_psi() -> None:
    training = pd.DataFrame({"plan": exact_mix({"free": 600, "basic": 300, "pro": 100})})
    serving = pd.DataFrame({"plan": exact_mix({"free": 570, "basic": 285, "pro": 95, "enterprise": 50})})

    row = skew_report(training, serving, [Feature("plan", "string", "varchar", "the plan", "checksum")]).iloc[0]

    assert row["psi"] == categorical_psi(training["plan"], serving["plan"])
    # Categories in sorted order: basic, enterprise, free, pro; enterprise has training share 0 -> epsilon.
    assert row["psi"] == pytest.approx(psi_by_hand([0.3, 0.0, 0.6, 0.1], [0.285, 0.05, 0.57, 0.095]))
    assert row["psi"] == pytest.approx(0.05 * math.log(0.05 / PSI_EPSILON), rel=0.05)  # the unseen share dominates
    assert row["severity"] == "error"
    assert row["largest_change_category"] == "enterprise"
    assert row["largest_frequency_change"] == pytest.approx(0.05)
    assert row["notes"] == "1 category unseen in training"


def test_a_null_rate_jump_of_six_points_is_an_error_even_when_the_values_do_not_move() -> None:
    training, serving = users(seed=1), users(seed=2)
    spend_training = training["spend_90d"].astype("Float64")
    spend_training.iloc[:100] = pd.NA  # 2% null
    spend_serving = serving["spend_90d"].astype(object)
    spend_serving.iloc[:400] = None  # 8% null, as an object column
    training["spend_90d"], serving["spend_90d"] = spend_training, spend_serving

    report = by_feature(skew_report(training, serving, FEATURES))

    spend = report.loc["spend_90d"]
    assert (spend["training_null_rate"], spend["serving_null_rate"]) == (pytest.approx(0.02), pytest.approx(0.08))
    assert spend["null_rate_change"] == pytest.approx(0.06)
    assert spend["severity"] == "error"
    assert spend["reasons"] == "null rate change +0.06, |change| >= 0.05"
    assert spend["psi"] < 0.1
    assert (report.drop(index="spend_90d")["severity"] == "ok").all()


def test_a_fifteen_percent_mean_shift_on_a_wide_distribution_is_only_a_warning() -> None:
    training, serving = users(seed=1), users(seed=2)
    serving["spend_90d"] = training["spend_90d"] * 1.15  # exponential: std = mean, so the histogram barely moves

    spend = by_feature(skew_report(training, serving, FEATURES)).loc["spend_90d"]

    assert spend["mean_shift"] == pytest.approx(0.15)
    assert spend["psi"] < 0.1  # about 0.02: below even the PSI warning
    assert spend["severity"] == "warn"
    assert spend["reasons"] == "mean shift 0.15 >= 0.1"


def test_a_bool_feature_is_numeric_with_psi_on_its_two_values() -> None:
    training = pd.DataFrame({"is_active": pd.array([True] * 300 + [False] * 700 + [None] * 10, dtype="boolean")})
    serving = pd.DataFrame({"is_active": pd.Series([True] * 500 + [False] * 500 + [None] * 10, dtype=object)})

    row = skew_report(training, serving, [("is_active", "bool")]).iloc[0]

    assert row["kind"] == "numeric"
    assert (row["training_mean"], row["serving_mean"]) == (pytest.approx(0.3), pytest.approx(0.5))
    assert row["psi"] == pytest.approx(psi_by_hand([0.7, 0.3], [0.5, 0.5]))  # 0.170
    assert row["mean_shift"] == pytest.approx(0.2 / math.sqrt(0.3 * 0.7))  # denominator: the std, 0.458 > 0.3
    assert row["ks"] == pytest.approx(0.2)
    assert row["severity"] == "warn"


def test_serving_values_outside_the_training_range_count_in_the_open_outer_bins() -> None:
    training = pd.DataFrame({"x": np.arange(1_000, dtype="float64")})  # deciles: 100 values each
    in_range = np.arange(0.0, 1_000.0, 2.0)  # 50 per decile
    serving = pd.DataFrame({"x": np.concatenate([in_range, np.full(250, -10.0), np.full(250, 5_000.0)])})

    row = skew_report(training, serving, [("x", "float64")]).iloc[0]

    # Below the training minimum joins the first decile, above the maximum the last.
    assert row["psi"] == pytest.approx(psi_by_hand([0.1] * 10, [0.3] + [0.05] * 8 + [0.3]))  # 0.38
    assert row["psi"] == numeric_psi(training["x"].to_numpy(), serving["x"].to_numpy())
    assert row["severity"] == "error"


# ---------------------------------------------------------------------------------------------------
# Edge cases: each gives finite or NaN statistics, never an exception


def test_a_zero_mean_feature_has_its_mean_shift_in_standard_deviations() -> None:
    training, serving = users(seed=1), users(seed=2)
    same = by_feature(skew_report(training, serving, FEATURES)).loc["balance_delta"]
    assert abs(same["training_mean"]) < 2.0  # ~0 on a standard deviation of 50
    assert same["mean_shift"] < 0.1 and same["severity"] == "ok"

    serving["balance_delta"] = serving["balance_delta"] + 25.0  # half a standard deviation
    shifted = by_feature(skew_report(training, serving, FEATURES)).loc["balance_delta"]
    assert shifted["mean_shift"] == pytest.approx(0.5, abs=0.05)
    assert shifted["severity"] in {"warn", "error"}
    assert "mean shift" in shifted["reasons"]


def test_relative_mean_shift_of_constant_sides_is_zero_when_equal_and_infinite_from_zero() -> None:
    assert relative_mean_shift(np.full(10, 5.0), np.full(10, 5.0)) == 0.0
    assert relative_mean_shift(np.zeros(10), np.zeros(10)) == 0.0
    assert relative_mean_shift(np.zeros(10), np.ones(10)) == math.inf
    assert relative_mean_shift(np.full(10, 4.0), np.full(10, 5.0)) == pytest.approx(0.25)  # scaled by |mean|
    assert math.isnan(relative_mean_shift(np.array([]), np.ones(10)))


def test_a_constant_numeric_feature_is_ok_when_it_stays_and_an_error_when_it_moves() -> None:
    training = pd.DataFrame({"c": np.full(100, 5, dtype="int64")})

    same = skew_report(training, training.copy(), [("c", "int64")]).iloc[0]
    assert (same["mean_shift"], same["psi"], same["ks"]) == (0.0, 0.0, 0.0)
    assert same["severity"] == "ok"
    assert same["notes"] == "constant in training"

    moved = skew_report(training, pd.DataFrame({"c": np.full(100, 6, dtype="int64")}), [("c", "int64")]).iloc[0]
    assert moved["mean_shift"] == pytest.approx(0.2)
    assert moved["psi"] > 10  # every value left the training point: 2 * (1 - eps) * ln(1 / eps)
    assert moved["severity"] == "error"

    from_zero = skew_report(
        pd.DataFrame({"c": np.zeros(100)}), pd.DataFrame({"c": np.ones(100)}), [("c", "float64")]
    ).iloc[0]
    assert from_zero["mean_shift"] == math.inf
    assert "mean shift inf >= 0.1" in from_zero["reasons"]


def test_an_all_null_serving_feature_is_a_null_rate_error_with_nan_statistics() -> None:
    training = pd.DataFrame({"x": np.arange(100.0), "plan": exact_mix({"free": 100})})
    serving = pd.DataFrame({"x": pd.array([pd.NA] * 50, dtype="Float64"), "plan": pd.Series([None] * 50, dtype=object)})

    report = by_feature(skew_report(training, serving, [("x", "float64"), ("plan", "string")]))

    for name in ("x", "plan"):
        row = report.loc[name]
        assert (row["serving_null_rate"], row["null_rate_change"]) == (1.0, 1.0)
        assert math.isnan(row["psi"]) and math.isnan(row["mean_shift"]) and math.isnan(row["ks"])
        assert row["severity"] == "error"
        assert row["reasons"] == "null rate change +1, |change| >= 0.05"
        assert row["notes"] == "all null in serving"


def test_a_feature_null_on_both_sides_is_ok_with_nan_statistics() -> None:
    frame = pd.DataFrame({"x": [None] * 20, "plan": pd.Series([None] * 20, dtype="string")})

    report = skew_report(frame, frame.copy(), [("x", "int64"), ("plan", "string")])

    assert (report["null_rate_change"] == 0).all()
    assert report[["training_mean", "mean_shift", "psi", "ks", "largest_frequency_change"]].isna().all().all()
    assert report["largest_change_category"].isna().all()
    assert (report["severity"] == "ok").all()
    assert (report["notes"] == "all null in training; all null in serving").all()


def test_a_single_category_feature_has_zero_psi_until_a_second_category_appears() -> None:
    training = pd.DataFrame({"plan": exact_mix({"free": 200})})

    same = skew_report(training, pd.DataFrame({"plan": exact_mix({"free": 50})}), [("plan", "string")]).iloc[0]
    assert (same["psi"], same["largest_frequency_change"], same["largest_change_category"]) == (0.0, 0.0, "free")
    assert same["severity"] == "ok"

    mixed = skew_report(
        training, pd.DataFrame({"plan": exact_mix({"free": 40, "pro": 10})}), [("plan", "string")]
    ).iloc[0]
    assert mixed["psi"] > 0.25
    assert mixed["largest_change_category"] in {
        "free",
        "pro",
    }  # both moved by 0.2; ties go to the first in sorted order
    assert mixed["largest_frequency_change"] == pytest.approx(0.2)


def test_an_empty_serving_frame_gives_zero_rows_and_nan_statistics_graded_ok() -> None:
    report = skew_report(users(seed=1, n=200), pd.DataFrame(), FEATURES)

    assert (report["serving_rows"] == 0).all() and (report["training_rows"] == 200).all()
    assert (
        report[["serving_null_rate", "null_rate_change", "serving_mean", "mean_shift", "psi", "ks"]].isna().all().all()
    )
    assert (report["severity"] == "ok").all()
    assert (report["notes"] == "no serving rows").all()

    with_columns = skew_report(users(seed=1, n=200), users(seed=2, n=0), FEATURES)
    pd.testing.assert_frame_equal(with_columns, report)


def test_a_frame_with_rows_but_without_the_feature_column_is_a_data_error() -> None:
    with pytest.raises(DataError, match="serving frame has no column 'plan'"):
        skew_report(users(seed=1, n=10), users(seed=2, n=10).drop(columns="plan"), FEATURES)


def test_a_non_numeric_value_in_a_numeric_feature_is_a_data_error() -> None:
    with pytest.raises(DataError, match="events_30d"):
        skew_report(
            pd.DataFrame({"events_30d": [1, 2]}), pd.DataFrame({"events_30d": [1, "many"]}), [("events_30d", "int64")]
        )


# ---------------------------------------------------------------------------------------------------
# Thresholds


def test_severity_thresholds_are_inclusive_and_nan_never_triggers() -> None:
    defaults = DriftThresholds()
    assert drift_severity(defaults, psi=0.25) == ("error", ["psi 0.25 >= 0.25"])
    assert drift_severity(defaults, psi=0.1) == ("warn", ["psi 0.1 >= 0.1"])
    assert drift_severity(defaults, mean_shift=0.1) == ("warn", ["mean shift 0.1 >= 0.1"])
    assert drift_severity(defaults, null_rate_change=-0.5)[0] == "error"  # a drop counts as much as a jump
    assert drift_severity(defaults, psi=0.09, mean_shift=0.09, null_rate_change=0.04) == ("ok", [])
    assert drift_severity(defaults, psi=math.nan, mean_shift=math.nan, null_rate_change=math.nan) == ("ok", [])
    assert drift_severity(defaults, psi=0.3, mean_shift=0.2) == ("error", ["psi 0.3 >= 0.25", "mean shift 0.2 >= 0.1"])


def test_a_per_feature_override_changes_only_that_features_grade() -> None:
    training, serving = users(seed=1), users(seed=2)
    serving["events_30d"] = training["events_30d"] * 1.3
    serving["spend_90d"] = training["spend_90d"] * 1.15
    thresholds = DriftThresholds.from_config(
        {
            "warn_psi": 0.05,
            "features": {
                "events_30d": {"error_psi": math.inf, "warn_psi": math.inf},
                "spend_90d": {"warn_mean_shift": 0.2},
            },
        }
    )

    report = by_feature(skew_report(training, serving, FEATURES, thresholds))

    assert report.loc["events_30d", "severity"] == "warn"  # the PSI rules are off; the mean shift still warns
    assert report.loc["spend_90d", "severity"] == "ok"
    assert thresholds.for_feature("plan") is thresholds
    assert thresholds.for_feature("spend_90d").as_dict() == {
        "warn_mean_shift": 0.2,
        "warn_psi": 0.05,
        "error_psi": 0.25,
        "error_null_rate_change": 0.05,
    }


def test_malformed_thresholds_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="warn_psi"):
        DriftThresholds(warn_psi=0.5, error_psi=0.25)
    with pytest.raises(ConfigError, match="error_null_rate_change"):
        DriftThresholds(error_null_rate_change=-0.1)
    with pytest.raises(ConfigError, match="unknown drift threshold"):
        DriftThresholds.from_config({"error_ks": 0.2})
    with pytest.raises(ConfigError, match="bins"):
        skew_report(users(seed=1, n=10), users(seed=2, n=10), FEATURES, bins=1)
    with pytest.raises(ConfigError, match="dtype"):
        skew_report(users(seed=1, n=10), users(seed=2, n=10), [("plan", "varchar")])


# ---------------------------------------------------------------------------------------------------
# The plot


@pytest.mark.parametrize(
    ("feature", "dtype", "training", "serving"),
    [
        ("events_30d", "int64", pd.Series(np.arange(100)), pd.Series(np.arange(100) * 1.3)),
        ("is_active", "bool", pd.Series([True, False, None], dtype="boolean"), pd.Series([True, True])),
        ("plan", "string", exact_mix({"free": 6, "basic": 3, "pro": 1}), exact_mix({"free": 3, "enterprise": 7})),
        ("plan", "string", pd.Series([f"c{i}" for i in range(40)]), pd.Series(["c1"])),
        ("spend_90d", "float64", pd.Series([None, None], dtype="Float64"), pd.Series([], dtype="float64")),
    ],
)
def test_histogram_markdown_embeds_a_small_png_titled_with_the_feature(
    feature: str, dtype: str, training: pd.Series, serving: pd.Series
) -> None:
    markdown = histogram_markdown(training, serving, feature, dtype)

    prefix = f"![{feature}](data:image/png;base64,"
    assert markdown.startswith(prefix) and markdown.endswith(")")
    png = base64.b64decode(markdown[len(prefix) : -1], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (400, 240)  # 5 x 3 inches at 80 dpi
    assert len(png) < 60_000


def test_histogram_markdown_leaves_pyplot_state_alone() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    histogram_markdown(pd.Series([1.0, 2.0]), pd.Series([2.0, 3.0]), "x", "float64")
    assert plt.get_fignums() == before


def test_the_one_line_histogram_shows_a_shift_on_shared_bins_and_categories_by_share() -> None:
    rng = np.random.default_rng(0)
    line = histogram_sparkline(
        pd.Series(rng.poisson(20, 5000)), pd.Series(rng.poisson(26, 5000)), "events_30d", "int64"
    )
    training, serving = re.fullmatch(r"training (\S+)   serving (\S+)   \((\S+) \.\. (\S+)\)", line).group(1, 2)
    assert len(training) == len(serving) == 10
    assert training.index("█") < serving.index("█")  # the serving mode lies to the right: the shift is visible
    line = histogram_sparkline(
        exact_mix({"free": 6, "basic": 3, "pro": 1}), exact_mix({"free": 3, "enterprise": 7}), "plan", "string"
    )
    assert line == "training ·▇▄▂   serving █▄··   (enterprise, free, basic, pro)"  # by largest share on either side
    assert (
        histogram_sparkline(pd.Series([], dtype="float64"), pd.Series([None], dtype="Float64"), "x", "float64")
        == "no non-null values"
    )
