import itertools
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_assets.demo_data import RAW_TABLES, DemoDataSpec, generate

ORIGIN = datetime(2024, 3, 1)
SPEC = DemoDataSpec(users=2000, days=30, origin=ORIGIN)
END = ORIGIN + timedelta(days=30)
KEYS = {
    "raw_users": ["user_id"],
    "raw_profile_changes": ["user_id", "changed_at"],
    "raw_events": ["event_id"],
    "raw_orders": ["order_id"],
}
CREATED = {"raw_profile_changes": "changed_at", "raw_events": "created_at", "raw_orders": "created_at"}


def _sorted(df: pd.DataFrame, table: str) -> pd.DataFrame:
    return df.sort_values(KEYS[table]).reset_index(drop=True)


def _assert_same(a: dict, b: dict) -> None:
    for t in RAW_TABLES:
        pd.testing.assert_frame_equal(_sorted(a[t], t), _sorted(b[t], t))


@pytest.fixture(scope="module")
def full() -> dict[str, pd.DataFrame]:
    return generate(SPEC, None, END)


@pytest.fixture(scope="module")
def long_history() -> dict[str, pd.DataFrame]:
    """Well past the initial days, as an hourly job would keep producing."""
    return generate(SPEC, None, ORIGIN + timedelta(days=150))


def test_tables_columns_and_dtypes(full):
    ts = np.dtype("datetime64[us]")
    expected = {
        "raw_users": {"user_id": np.int64, "birthdate": ts, "signup_at": ts, "loaded_at": ts},
        "raw_profile_changes": {
            "user_id": np.int64,
            "changed_at": ts,
            "country": "str",
            "plan": "str",
            "loaded_at": ts,
        },
        "raw_events": {
            "event_id": np.int64,
            "user_id": np.int64,
            "event_type": "str",
            "created_at": ts,
            "loaded_at": ts,
        },
        "raw_orders": {
            "order_id": np.int64,
            "user_id": np.int64,
            "amount": np.float64,
            "created_at": ts,
            "loaded_at": ts,
        },
    }
    assert tuple(full) == RAW_TABLES
    for table, cols in expected.items():
        df = full[table]
        assert list(df.columns) == list(cols), table
        for col, dtype in cols.items():
            assert df[col].dtype == pd.api.types.pandas_dtype(dtype), (table, col, df[col].dtype)
        assert len(df) > 0, table
    users = full["raw_users"]
    assert (users.birthdate == users.birthdate.dt.normalize()).all()
    age = (users.signup_at - users.birthdate).dt.days / 365.25
    assert age.between(18, 75.1).all()
    orders = full["raw_orders"]
    assert (orders.amount > 0).all()
    assert np.allclose(orders.amount, orders.amount.round(2))


def test_deterministic_and_seed_dependent(full):
    _assert_same(full, generate(DemoDataSpec(users=2000, days=30, origin=ORIGIN), None, END))
    other = generate(DemoDataSpec(users=2000, days=30, origin=ORIGIN, seed=8), None, END)
    assert not full["raw_users"].signup_at.equals(other["raw_users"].signup_at)
    assert len(full["raw_events"]) != len(other["raw_events"])


@pytest.mark.parametrize(
    "b, c",
    [
        (ORIGIN + timedelta(days=10, hours=5), END),
        (END - timedelta(hours=1), END + timedelta(days=7, hours=3)),  # continues past origin + days
        (ORIGIN - timedelta(days=20), ORIGIN + timedelta(hours=2)),
    ],
)
def test_slices_concatenate_to_the_whole(b, c):
    first, second = generate(SPEC, None, b), generate(SPEC, b, c)
    whole = generate(SPEC, None, c)
    joined = {t: pd.concat([first[t], second[t]], ignore_index=True) for t in RAW_TABLES}
    _assert_same(joined, whole)


def test_hourly_slices_concatenate_to_the_whole():
    spec = DemoDataSpec(users=300, days=2, origin=ORIGIN, seed=3)
    bounds = [None] + [ORIGIN + timedelta(hours=h) for h in range(30, 30 + 72, 1)]
    parts = [generate(spec, a, b) for a, b in itertools.pairwise(bounds)]
    joined = {t: pd.concat([p[t] for p in parts], ignore_index=True) for t in RAW_TABLES}
    _assert_same(joined, generate(spec, None, bounds[-1]))
    assert len(joined["raw_events"]) > 0


def test_rows_respect_slice_and_ids_are_unique():
    a, b = ORIGIN + timedelta(days=5, hours=7), ORIGIN + timedelta(days=12)
    out = generate(SPEC, a, b)
    for table, df in out.items():
        assert len(df) > 0, table
        assert ((df.loaded_at > a) & (df.loaded_at <= b)).all(), table
        if table in CREATED:
            assert (df[CREATED[table]] <= df.loaded_at).all(), table
        assert not df.duplicated(KEYS[table]).any(), table


def test_ids_unique_over_long_history(long_history):
    assert long_history["raw_events"].event_id.is_unique
    assert long_history["raw_orders"].order_id.is_unique
    assert long_history["raw_users"].user_id.tolist() == list(range(1, SPEC.users + 1))


def test_a_few_percent_of_events_arrive_late(full):
    ev = full["raw_events"]
    late = (ev.loaded_at - ev.created_at) > pd.Timedelta(hours=1)
    assert 0.01 <= late.mean() <= 0.06
    assert (ev.loaded_at - ev.created_at).max() <= pd.Timedelta(days=3)


def test_profile_changes_start_at_signup(long_history):
    users, pc = long_history["raw_users"], long_history["raw_profile_changes"]
    first = pc.sort_values(["user_id", "changed_at"]).groupby("user_id").first()
    assert len(first) == len(users)
    signup = users.set_index("user_id").signup_at
    pd.testing.assert_series_equal(first.changed_at, signup.loc[first.index], check_names=False)
    assert set(pc.plan) == {"free", "basic", "pro"}
    assert set(pc.country) <= {"US", "DE", "FR", "GB", "BR", "IN", "JP"}
    # Later rows really are changes, and there are some of them.
    assert len(pc) > 1.2 * len(users)
    prev = pc.sort_values(["user_id", "changed_at"]).groupby("user_id")[["country", "plan"]].shift()
    later = prev.plan.notna()
    assert (
        (pc.loc[later, "country"] != prev.loc[later, "country"]) | (pc.loc[later, "plan"] != prev.loc[later, "plan"])
    ).all()


def test_no_events_or_orders_before_signup(long_history):
    signup = long_history["raw_users"].set_index("user_id").signup_at
    for table in ("raw_events", "raw_orders"):
        df = long_history[table]
        assert (df.created_at >= signup.loc[df.user_id].to_numpy()).all(), table


def test_activity_fades_before_users_go_quiet(long_history):
    """Users who stop (churn) were already less active in their last 14 days than in the 14 before."""
    ev = long_history["raw_events"]
    end = ev.created_at.max()
    span = ev.groupby("user_id").created_at.agg(["min", "max"])
    quiet = span[(span["max"] < end - pd.Timedelta(days=30)) & (span["min"] < span["max"] - pd.Timedelta(days=28))]
    assert len(quiet) >= 50
    ev = ev[ev.user_id.isin(quiet.index)]
    before_last = span.loc[ev.user_id, "max"].to_numpy() - ev.created_at.to_numpy()
    recent = ((before_last > pd.Timedelta(0)) & (before_last <= pd.Timedelta(days=14))).sum()
    earlier = ((before_last > pd.Timedelta(days=14)) & (before_last <= pd.Timedelta(days=28))).sum()
    assert recent < 0.8 * earlier


def test_pro_users_spend_more_per_order(long_history):
    pc = long_history["raw_profile_changes"]
    first_plan = pc.sort_values(["user_id", "changed_at"]).groupby("user_id").plan.first()
    orders = long_history["raw_orders"]
    mean = orders.amount.groupby(first_plan.loc[orders.user_id].to_numpy()).mean()
    assert mean["pro"] > 1.5 * mean["basic"]
    assert mean["basic"] > 1.5 * mean["free"]


def test_engaged_users_order_more(long_history):
    events_per_user = long_history["raw_events"].groupby("user_id").size()
    orders_per_user = long_history["raw_orders"].groupby("user_id").size().reindex(events_per_user.index, fill_value=0)
    top = events_per_user >= events_per_user.quantile(0.75)
    bottom = events_per_user <= events_per_user.quantile(0.25)
    assert orders_per_user[top].mean() > 3 * orders_per_user[bottom].mean()


def test_the_share_of_quiet_users_stays_level_over_a_long_history():
    """Models train on old label times and serve now, so the demo population must not drift: the share of
    signed-up users without an event, or without an order, in the last 30 days is level over 300 days."""
    spec = DemoDataSpec(users=3000, days=300, origin=ORIGIN)
    data = generate(spec, None, ORIGIN + timedelta(days=300))
    users = data["raw_users"]
    for table in ("raw_events", "raw_orders"):
        df = data[table]
        shares = []
        for day in range(60, 301, 60):
            at = pd.Timestamp(ORIGIN + timedelta(days=day))
            signed_up = users.user_id[users.signup_at < at]
            recent = df.user_id[(df.created_at >= at - pd.Timedelta(days=30)) & (df.created_at < at)]
            shares.append(1 - signed_up.isin(recent).mean())
        assert min(shares) > 0.3 and max(shares) - min(shares) < 0.04, (table, shares)
