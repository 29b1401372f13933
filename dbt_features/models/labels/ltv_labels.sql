{#-
  One label per user and week: revenue_90d, the sum of the user's orders in the 90 days from
  label_time (0 without orders). Label times follow churn_labels' rule with a 90-day outcome
  window: weekly, shifted by (user_id mod 168) hours, a month after the first event at the
  earliest, and at the latest with the whole window's orders loaded.
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

labelled as (
    {{ weekly_label_times('users', 'events', 'orders', '90 days') }}
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
        {{ cast('outcomes.revenue_90d', 'double precision') }} as revenue_90d
    from outcomes
)

select * from final
