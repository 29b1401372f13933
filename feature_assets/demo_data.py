"""Deterministic raw data for a demo subscription product.

The feature store needs a source that behaves like a real one: rows arrive
incrementally (some of them late), history keeps growing, and churn and spend
really depend on behaviour, so that features built on top can predict them.

Everything is a pure function of (spec, time): per-user attributes come from one
RNG seeded by (seed, "users"), activity of day ``d`` from an RNG seeded by
(seed, "day", d). A slice regenerates the whole day chunks that can contribute to
it and keeps the rows whose ``loaded_at`` falls inside, so consecutive slices
concatenate to exactly the rows of one big slice.

All timestamps are naive UTC ``datetime64[us]``. Internally they are int64
microseconds since ``spec.origin``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

__all__ = ["RAW_TABLES", "DemoDataSpec", "generate"]

RAW_TABLES = ("raw_users", "raw_profile_changes", "raw_events", "raw_orders")

_SEC = 1_000_000
_HOUR = 3600 * _SEC
_DAY = 24 * _HOUR
_YEAR = 365 * _DAY

# Signups grow by this share a day, from long before the history up to its end: with a steady growth
# rate the users' tenures, and with them the share of churned and quiet users, are distributed alike at
# every time (a stable population). Training on old label times then sees what serving sees now; with
# a constant signup rate, churned users would pile up and recent activity would drift down.
_SIGNUP_GROWTH = 0.004
_CHANGE_HORIZON = 3 * _YEAR  # profile changes are drawn up front over this span
_CHANGES_PER_YEAR = 2.0
_FADE = 14 * _DAY  # engagement fades linearly to 0 over the days before churn
_LATE_SHARE = 0.03
_SHORT_DELAY = (1 * _SEC, 600 * _SEC)
_LATE_DELAY = (_HOUR, 3 * _DAY)
_MAX_DELAY = _LATE_DELAY[1]

_COUNTRIES = np.array(["US", "DE", "FR", "GB", "BR", "IN", "JP"], dtype=object)
_COUNTRY_CUM = np.cumsum([0.34, 0.12, 0.10, 0.12, 0.11, 0.13, 0.08])[:-1]
_PLANS = np.array(["free", "basic", "pro"], dtype=object)
_CHURN_PLAN_FACTOR = np.array([2.5, 1.0, 0.6])  # free users churn most
_ORDER_RATE = np.array([0.03, 0.06, 0.09])  # orders/day per unit of engagement
_ORDER_MEAN = np.array([10.0, 25.0, 60.0])
_ORDER_SIGMA = 0.6
_EVENT_TYPES = np.array(["page_view", "search", "add_to_cart", "support_ticket"], dtype=object)
# Cumulative type probabilities (last one implied): normal vs. fading towards churn,
# when users search and buy less and open more support tickets.
_EVENT_CUM = np.cumsum([[0.62, 0.22, 0.12], [0.55, 0.17, 0.08]], axis=1)

_TAG_USERS = 1
_TAG_DAY = 2


@dataclass(frozen=True)
class DemoDataSpec:
    """Shape of the demo world; together with a time range it fully determines the data."""

    users: int  # population size
    days: int  # length of the initial history
    origin: datetime  # start of the history (naive UTC hour boundary); history = [origin, origin + days)
    seed: int = 7

    def __post_init__(self) -> None:
        if self.users < 0 or self.days < 1 or self.seed < 0:
            raise ValueError("need users >= 0, days >= 1 and seed >= 0")
        o = self.origin
        if o.tzinfo is not None or (o.minute, o.second, o.microsecond) != (0, 0, 0):
            raise ValueError("origin must be a naive UTC hour boundary")


def generate(spec: DemoDataSpec, loaded_after: datetime | None, loaded_until: datetime) -> dict[str, pd.DataFrame]:
    """Rows whose loaded_at is in (loaded_after, loaded_until]; loaded_after=None means from the beginning."""
    origin = np.datetime64(spec.origin, "us")
    hi = _offset(loaded_until, origin)
    lo = None if loaded_after is None else _offset(loaded_after, origin)
    pop = _population(spec)

    def in_slice(loaded: np.ndarray) -> np.ndarray:
        m = loaded <= hi
        return m if lo is None else m & (loaded > lo)

    m = in_slice(pop.loaded)
    users = pd.DataFrame(
        {
            "user_id": pop.user_id[m],
            "birthdate": pop.birthdate[m],
            "signup_at": _ts(pop.signup[m], origin),
            "loaded_at": _ts(pop.loaded[m], origin),
        },
        copy=False,
    )

    m = in_slice(pop.pc_loaded)
    profile_changes = pd.DataFrame(
        {
            "user_id": pop.user_id[pop.pc_user[m]],
            "changed_at": _ts(pop.pc_changed[m], origin),
            "country": _str(_COUNTRIES, pop.pc_country[m]),
            "plan": _str(_PLANS, pop.pc_plan[m]),
            "loaded_at": _ts(pop.pc_loaded[m], origin),
        },
        copy=False,
    )

    # Day chunks that can hold a row loaded in the slice (created_at <= loaded_at <= created_at + max delay).
    first = 0 if lo is None else max(0, (lo - _MAX_DELAY) // _DAY - 1)
    last = hi // _DAY
    ev_parts: list[dict[str, np.ndarray]] = []
    ord_parts: list[dict[str, np.ndarray]] = []
    for day in range(first, last + 1):
        for chunk, parts in zip(_day_chunk(spec, pop, day), (ev_parts, ord_parts)):
            m = in_slice(chunk["loaded"])
            parts.append(chunk if m.all() else {k: v[m] for k, v in chunk.items()})
    # The concatenated arrays are fresh copies, so they are converted in place to save memory.
    ev = _concat(ev_parts, _EMPTY_EVENTS)
    del ev_parts
    events = pd.DataFrame(
        {
            "event_id": ev["id"],
            "user_id": _inplace_add(ev["user"], 1),
            "event_type": _str(_EVENT_TYPES, ev.pop("type")),
            "created_at": _inplace_ts(ev["created"], origin),
            "loaded_at": _inplace_ts(ev["loaded"], origin),
        },
        copy=False,
    )
    del ev
    orders = _concat(ord_parts, _EMPTY_ORDERS)
    del ord_parts
    orders_df = pd.DataFrame(
        {
            "order_id": orders["id"],
            "user_id": _inplace_add(orders["user"], 1),
            "amount": orders["amount"],
            "created_at": _inplace_ts(orders["created"], origin),
            "loaded_at": _inplace_ts(orders["loaded"], origin),
        },
        copy=False,
    )
    return {
        "raw_users": users,
        "raw_profile_changes": profile_changes,
        "raw_events": events,
        "raw_orders": orders_df,
    }


@dataclass(frozen=True)
class _Population:
    """Static per-user attributes; times are int64 microseconds since origin."""

    user_id: np.ndarray
    birthdate: np.ndarray  # datetime64[us] at midnight
    signup: np.ndarray
    loaded: np.ndarray
    engagement: np.ndarray  # latent events/day
    plan: np.ndarray  # first plan code, drives churn and spend
    churn: np.ndarray  # latent churn time
    pc_user: np.ndarray  # profile changes: user index, sorted by (user, changed)
    pc_changed: np.ndarray
    pc_country: np.ndarray
    pc_plan: np.ndarray
    pc_loaded: np.ndarray


@functools.lru_cache(maxsize=2)
def _population(spec: DemoDataSpec) -> _Population:
    """Drawn once per spec (cached: an hourly job would otherwise redraw it every call)."""
    rng = np.random.default_rng([spec.seed, _TAG_USERS])
    n = spec.users
    # Times since signup, counted back from the end of the history, are exponential under that growth.
    signup = spec.days * _DAY - 1 - (rng.exponential(1.0 / _SIGNUP_GROWTH, n) * _DAY).astype(np.int64)
    loaded = signup + rng.integers(_SEC, 300 * _SEC, n, endpoint=True)
    age_days = rng.integers(18 * 365 + 5, 75 * 365, n)  # age at signup within 18..75
    signup_day = (np.datetime64(spec.origin, "us") + signup.astype("m8[us]")).astype("M8[D]")
    birthdate = (signup_day - age_days.astype("m8[D]")).astype("M8[us]")

    engagement = rng.gamma(2.0, 0.75, n)  # mean 1.5 events/day
    plan_cum = _plan_cum(engagement)
    plan = _pick(rng.random(n), plan_cum)
    country = _pick(rng.random(n), _COUNTRY_CUM)
    # Daily churn hazard: higher for low engagement and for the free plan (first plan, for simplicity).
    hazard = 0.002 * _CHURN_PLAN_FACTOR[plan] * np.exp(-0.8 * (engagement - 1.5))
    lifetime = np.minimum(rng.exponential(1.0 / hazard, n), 200 * 365.0)
    churn = signup + (lifetime * _DAY).astype(np.int64)

    # Later profile changes, drawn up front; each changes either country or plan.
    k = rng.poisson(_CHANGES_PER_YEAR * _CHANGE_HORIZON / _YEAR, n)
    cu = np.repeat(np.arange(n), k)
    m = len(cu)
    c_delta_s = rng.integers(1, _CHANGE_HORIZON // _SEC, m)  # whole seconds after signup
    c_is_country = rng.random(m) < 0.25
    c_country = _pick(rng.random(m), _COUNTRY_CUM)
    c_plan = _pick(rng.random(m), plan_cum[cu])
    c_changed = signup[cu] + c_delta_s * _SEC
    c_loaded = c_changed + _delays(rng, m)
    keep = c_changed < churn[cu]  # churned users stop changing their profile

    users_idx = np.arange(n)
    pc_user = np.concatenate([users_idx, cu[keep]])
    pc_changed = np.concatenate([signup, c_changed[keep]])
    pc_loaded = np.concatenate([loaded, c_loaded[keep]])
    no = np.full(keep.sum(), -1, dtype=np.int8)
    pc_country = np.concatenate([country, np.where(c_is_country[keep], c_country[keep], no)])
    pc_plan = np.concatenate([plan, np.where(c_is_country[keep], no, c_plan[keep])])
    # Sort by (user, time since signup); the signup row (offset 0) comes first for each user.
    key = pc_user * (_CHANGE_HORIZON // _SEC) + np.concatenate([np.zeros(n, np.int64), c_delta_s[keep]])
    order = np.argsort(key, kind="stable")
    pc_user, pc_changed, pc_loaded = pc_user[order], pc_changed[order], pc_loaded[order]
    pc_country = _ffill(pc_country[order])
    pc_plan = _ffill(pc_plan[order])
    # Drop changes that leave the (country, plan) state unchanged.
    same = np.zeros(len(pc_user), dtype=bool)
    same[1:] = (pc_user[1:] == pc_user[:-1]) & (pc_country[1:] == pc_country[:-1]) & (pc_plan[1:] == pc_plan[:-1])
    keep = ~same

    pop = _Population(
        user_id=users_idx.astype(np.int64) + 1,
        birthdate=birthdate,
        signup=signup,
        loaded=loaded,
        engagement=engagement,
        plan=plan,
        churn=churn,
        pc_user=pc_user[keep],
        pc_changed=pc_changed[keep],
        pc_country=pc_country[keep],
        pc_plan=pc_plan[keep],
        pc_loaded=pc_loaded[keep],
    )
    for a in vars(pop).values():
        a.flags.writeable = False  # shared through the cache
    return pop


def _day_chunk(spec: DemoDataSpec, pop: _Population, day: int) -> tuple[dict, dict]:
    """All events and orders created on one day; depends only on (spec, day)."""
    rng = np.random.default_rng([spec.seed, _TAG_DAY, day])
    t0 = day * _DAY
    start = np.maximum(pop.signup, t0)
    end = np.minimum(pop.churn, t0 + _DAY)
    active = np.flatnonzero(end > start)
    start, end, churn = start[active], end[active], pop.churn[active]
    dur = end - start
    fade = np.clip((churn - (start + dur // 2)) / _FADE, 0.0, 1.0)
    intensity = pop.engagement[active] * fade * (dur / _DAY)

    def draw(rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = rng.poisson(rate)
        idx = np.repeat(np.arange(len(active)), counts)
        created = np.repeat(start, counts)
        created += (rng.random(len(idx)) * np.repeat(dur, counts)).astype(np.int64)
        return idx, created

    idx, created = draw(intensity)
    fading = (churn[idx] - created) < _FADE
    u = rng.random(len(idx))
    etype = np.where(fading, _pick(u, _EVENT_CUM[1]), _pick(u, _EVENT_CUM[0]))
    events = {
        "id": day * 10**8 + np.arange(len(idx), dtype=np.int64),
        "user": active[idx],
        "type": etype,
        "created": created,
        "loaded": created + _delays(rng, len(idx)),
    }

    plan = pop.plan[active]  # the user's first plan, for simplicity (later plan changes don't affect spend)
    idx, created = draw(intensity * _ORDER_RATE[plan])
    p = plan[idx]
    mu = np.log(_ORDER_MEAN[p]) - _ORDER_SIGMA**2 / 2  # so that the mean is _ORDER_MEAN
    amount = np.maximum(np.round(rng.lognormal(mu, _ORDER_SIGMA), 2), 0.01)
    orders = {
        "id": day * 10**8 + np.arange(len(idx), dtype=np.int64),
        "user": active[idx],
        "amount": amount,
        "created": created,
        "loaded": created + _delays(rng, len(idx)),
    }
    assert len(events["id"]) < 10**8 and len(orders["id"]) < 10**8, "ids would collide across days"
    return events, orders


_EMPTY_EVENTS = {
    "id": np.empty(0, np.int64),
    "user": np.empty(0, np.int64),
    "type": np.empty(0, np.int8),
    "created": np.empty(0, np.int64),
    "loaded": np.empty(0, np.int64),
}
_EMPTY_ORDERS = {
    "id": np.empty(0, np.int64),
    "user": np.empty(0, np.int64),
    "amount": np.empty(0, np.float64),
    "created": np.empty(0, np.int64),
    "loaded": np.empty(0, np.int64),
}


def _concat(parts: list[dict], empty: dict) -> dict:
    return {k: np.concatenate([empty[k]] + [p[k] for p in parts]) for k in empty}


def _delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly seconds to minutes; a few percent arrive 1 hour to 3 days late."""
    late = rng.random(n) < _LATE_SHARE
    delay = rng.integers(*_SHORT_DELAY, n, endpoint=True)
    delay[late] = rng.integers(*_LATE_DELAY, late.sum(), endpoint=True)
    return delay


def _plan_cum(engagement: np.ndarray) -> np.ndarray:
    """Cumulative (free, basic) probabilities; engaged users more often pay."""
    logits = np.stack([np.zeros_like(engagement), 0.6 * engagement - 1.0, engagement - 2.5], axis=1)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return np.cumsum(p[:, :2], axis=1)


def _pick(u: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Category code for uniforms ``u`` given cumulative probabilities (shared, or one row per draw)."""
    code = np.zeros(len(u), dtype=np.int8)
    for j in range(cum.shape[-1]):  # loop over categories, not rows
        code += u >= cum[..., j]
    return code


def _ffill(codes: np.ndarray) -> np.ndarray:
    """Forward-fill -1 entries; each user's first row is always set, so nothing leaks across users."""
    pos = np.where(codes >= 0, np.arange(len(codes)), 0)
    return codes[np.maximum.accumulate(pos)] if len(codes) else codes


def _offset(t: datetime, origin: np.datetime64) -> int:
    if getattr(t, "tzinfo", None) is not None:
        raise ValueError("timestamps must be naive UTC")
    return int((np.datetime64(t, "us") - origin).astype(np.int64))


def _ts(offsets: np.ndarray, origin: np.datetime64) -> np.ndarray:
    return origin + offsets.astype("m8[us]")


def _inplace_ts(offsets: np.ndarray, origin: np.datetime64) -> np.ndarray:
    offsets += origin.astype(np.int64)
    return offsets.view("M8[us]")


def _inplace_add(a: np.ndarray, k: int) -> np.ndarray:
    a += k
    return a


def _str(labels: np.ndarray, codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    return pd.array(labels[codes], dtype="str")
