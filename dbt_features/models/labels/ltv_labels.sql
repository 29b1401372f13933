{#-
  One label per user and week: revenue_90d, the sum of the user's orders in the 90 days from
  label_time (0 without orders). Label times follow churn_labels' rule with a 90-day outcome
  window: weekly, shifted by (user_id mod 168) hours, a month after the first event at the
  earliest and a full window before the day of the newest event at the latest.
-#}

with

users as (
    select * from {{ ref('stg_app__users') }}
),

events as (
    select * from {{ ref('stg_app__events') }}
),

orders as (
    select * from {{ ref('stg_app__orders') }}
),

bounds as (
    select
        min(events.created_at) as first_event,
        max(events.created_at) as last_event
    from events
),

weeks as (
    select series.k
    from generate_series(0, 1000) as series (k)
),

all_weeks as (
    select
        cast(date_trunc('day', bounds.last_event) as timestamp)
            - interval '90 days'
            - weeks.k * interval '7 days' as week_end
    from weeks
    cross join bounds
),

label_weeks as (
    select all_weeks.week_end
    from all_weeks
    cross join bounds
    where all_weeks.week_end >= bounds.first_event + interval '30 days'
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
    select
        candidates.user_id,
        candidates.label_time
    from candidates
    cross join bounds
    where candidates.label_time >= bounds.first_event + interval '30 days'
        and candidates.signup_at < candidates.label_time
),

outcomes as (
    select
        labelled.user_id,
        labelled.label_time,
        coalesce(sum(outcome.amount), 0) as revenue_90d
    from labelled
    left join orders as outcome
        on outcome.user_id = labelled.user_id
        and outcome.created_at >= labelled.label_time
        and outcome.created_at < labelled.label_time + interval '90 days'
    group by labelled.user_id, labelled.label_time
),

final as (
    select
        cast(outcomes.user_id as bigint) as user_id,
        cast(outcomes.label_time as timestamp) as label_time,
        cast(outcomes.revenue_90d as double precision) as revenue_90d
    from outcomes
)

select * from final
