"""Labels and point-in-time training sets, computed in the warehouse (never by loading the history into pandas).

Point-in-time rule: a label at time t gets the snapshot with the greatest computed_at < t (the snapshot
stamped t is not available yet at t) that is not older than the view's online TTL (computed_at >= t - TTL,
the staleness rule that expires online keys). With none, the features are null and snapshot_at is null.
One output row per label row, duplicates included, numbered by label_row in a deterministic order.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from feature_assets.registry import FeatureSet
from feature_assets.resources.warehouse import Warehouse
from feature_assets.settings import validate_identifier

__all__ = ["LabelSpec", "LABELS", "labels_sql", "point_in_time_sql", "build_table", "LABEL_TIME", "SNAPSHOT_AT", "LABEL_ROW"]

LABEL_TIME = "label_time"
SNAPSHOT_AT = "snapshot_at"
LABEL_ROW = "label_row"

# Label times: weekly per user, shifted by (user_id mod 168) hours so they spread over every hour of the
# week; the first ones leave a month of history for the features, the last ones a full outcome window.
_LABEL_EVERY = timedelta(days=7)
_FIRST_AFTER = timedelta(days=30)


@dataclass(frozen=True)
class LabelSpec:
    """A label table: for every user signed up before label_time, an outcome over `window` after it.

    Every user, not only active ones: serving scores the whole online store, so training sees the same population.
    """

    table: str
    target: str
    window: timedelta
    outcome: str  # SQL over the outcome rows joined as `outcome` (null when none), aggregated per label
    outcome_source: str
    mean: str  # SQL: the target's mean over the table, for the asset's metadata
    description: str


LABELS = {
    "churn_labels": LabelSpec(
        table="churn_labels",
        target="churned",
        window=timedelta(days=30),
        outcome="count(outcome.user_id) = 0",
        outcome_source="stg_app__events",
        mean="avg(case when churned then 1.0 else 0.0 end)",
        description="churned: the user has no event in the 30 days after label_time",
    ),
    "ltv_labels": LabelSpec(
        table="ltv_labels",
        target="revenue_90d",
        window=timedelta(days=90),
        outcome="cast(coalesce(sum(outcome.amount), 0) as double precision)",
        outcome_source="stg_app__orders",
        mean="avg(revenue_90d)",
        description="revenue_90d: the sum of the user's orders in the 90 days after label_time",
    ),
}


def labels_sql(spec: LabelSpec) -> tuple[str, list[Any]]:
    """The label rows (user_id, label_time, target) from the staging views; the last label times end a full
    outcome window before the newest event, so every outcome is observed."""
    target, source = validate_identifier(spec.target, "target"), validate_identifier(spec.outcome_source, "table")
    sql = f"""
        with

        users as (select * from stg_app__users),
        events as (select * from stg_app__events),
        outcomes as (select * from {source}),

        bounds as (
            select min(created_at) as first_event, max(created_at) as last_event from events
        ),

        weeks as (
            select k from generate_series(0, 1000) as s(k)
        ),

        all_weeks as (
            select cast(date_trunc('day', bounds.last_event) as timestamp) - ? - weeks.k * ? as week_end
            from weeks
            cross join bounds
        ),

        label_weeks as (
            select all_weeks.week_end
            from all_weeks
            cross join bounds
            where all_weeks.week_end >= bounds.first_event + ?
        ),

        candidates as (
            select
                users.user_id,
                users.signup_at,
                label_weeks.week_end - (users.user_id % 168) * interval '1 hour' as label_time
            from users
            cross join label_weeks
        ),

        labelled as (
            select candidates.user_id, candidates.label_time
            from candidates
            cross join bounds
            where candidates.label_time >= bounds.first_event + ?
                and candidates.signup_at < candidates.label_time
        ),

        final as (
            select
                labelled.user_id,
                labelled.label_time,
                {spec.outcome} as {target}
            from labelled
            left join outcomes as outcome
                on outcome.user_id = labelled.user_id
                and outcome.created_at >= labelled.label_time
                and outcome.created_at < labelled.label_time + ?
            group by labelled.user_id, labelled.label_time
        )

        select * from final
    """
    params = [spec.window, _LABEL_EVERY, _FIRST_AFTER, _FIRST_AFTER, spec.window]
    return sql, params


def point_in_time_sql(kind: str, feature_set: FeatureSet, labels: str) -> tuple[str, list[Any]]:
    """The training set of a feature set over a label table (user key, label_time, target).

    DuckDB: an ASOF join. PostgreSQL: labels and snapshots merged on one timeline per entity, a running max
    carries the latest snapshot time forward (a label sorts before a snapshot at the same time, so a
    snapshot stamped t is not seen at t), then one equi-join fetches that snapshot's features.
    """
    view = feature_set.view
    key, stamp = view.entity_key, view.timestamp
    target = validate_identifier(feature_set.target, "target")
    labels = validate_identifier(labels, "labels table")
    names = [validate_identifier(name, "feature") for name in feature_set.feature_names]
    ordered_labels = f"""
        labels as (
            select {key}, {LABEL_TIME}, {target},
                row_number() over (order by {LABEL_TIME}, {key}, {target}) as {LABEL_ROW}
            from {labels}
        )"""
    if kind == "duckdb":
        features = ", ".join(f"snapshot.{name}" for name in names)
        matched = f"""
        matched as (
            select labels.*, snapshot.{stamp} as candidate_at, {features}
            from labels
            asof left join {view.name} as snapshot
                on labels.{key} = snapshot.{key} and labels.{LABEL_TIME} > snapshot.{stamp}
        )"""
        fresh_features = ", ".join(f"case when fresh then {name} end as {name}" for name in names)
        sql = f"""
            with {ordered_labels},
            {matched},
            judged as (
                select *, candidate_at >= {LABEL_TIME} - ? as fresh from matched
            )
            select {LABEL_ROW}, {key}, {LABEL_TIME}, {target},
                case when fresh then candidate_at end as {SNAPSHOT_AT}, {fresh_features}
            from judged
        """
        return sql, [view.online_ttl]
    features = ", ".join(f"snapshot.{name}" for name in names)
    sql = f"""
        with {ordered_labels},
        timeline as (
            select {key}, {LABEL_TIME} as at, 0 as is_snapshot, {LABEL_ROW}, {target} from labels
            union all
            select {key}, {stamp}, 1, null, null from {view.name}
        ),
        carried as (
            select *,
                max(case when is_snapshot = 1 then at end) over (
                    partition by {key} order by at, is_snapshot rows between unbounded preceding and current row
                ) as candidate_at
            from timeline
        ),
        matched as (
            select {LABEL_ROW}, {key}, at as {LABEL_TIME}, {target},
                case when candidate_at >= at - ? then candidate_at end as {SNAPSHOT_AT}
            from carried
            where is_snapshot = 0
        )
        select matched.*, {features}
        from matched
        left join {view.name} as snapshot
            on snapshot.{key} = matched.{key} and snapshot.{stamp} = matched.{SNAPSHOT_AT}
    """
    return sql, [view.online_ttl]


def build_table(warehouse: Warehouse, con: Any, table: str, sql: str, params: list[Any]) -> int:
    """Replaces `table` with the query's rows in one transaction; returns the row count."""
    validate_identifier(table, "table")
    warehouse.execute(con, f"drop table if exists {table}")
    warehouse.execute(con, f"create table {table} as {sql}", params)
    return int(warehouse.fetch(con, f"select count(*) as n from {table}")["n"].iloc[0])
