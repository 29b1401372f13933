"""An independent, obviously-correct computation of user_features: one user, one as-of time, plain loops.

Slow on purpose: it restates the feature definitions in Python, not from the SQL, so the tests have something
to hold the warehouse's results against.
"""

from datetime import datetime, timedelta

import pandas as pd

__all__ = ["reference_features"]

WINDOW = timedelta(days=30)


def _rows(frame: pd.DataFrame, user_id: int) -> list:
    return list(frame[frame["user_id"] == user_id].itertuples(index=False))


def reference_features(raw: dict[str, pd.DataFrame], user_id: int, as_of: datetime) -> dict | None:
    """The snapshot of one user at as_of, or None if the user does not exist yet at as_of."""
    users = [u for u in _rows(raw["raw_users"], user_id) if u.signup_at < as_of and u.loaded_at <= as_of]
    if not users:
        return None
    birth = users[0].birthdate
    age = as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))

    country = plan = None
    latest = None
    for change in _rows(raw["raw_profile_changes"], user_id):
        if (
            change.changed_at < as_of
            and change.loaded_at <= as_of
            and (latest is None or (change.changed_at, change.loaded_at) > latest)
        ):
            latest = (change.changed_at, change.loaded_at)
            country, plan = change.country, change.plan

    def in_window(row) -> bool:
        return as_of - WINDOW <= row.created_at < as_of and row.loaded_at <= as_of

    events = sum(1 for event in _rows(raw["raw_events"], user_id) if in_window(event))
    amounts = [order.amount for order in _rows(raw["raw_orders"], user_id) if in_window(order)]
    return {
        "user_id": user_id,
        "computed_at": as_of,
        "age": age,
        "country": country,
        "plan": plan,
        "events_30d": events,
        "avg_order_30d": sum(amounts) / len(amounts) if amounts else None,
    }
