{#-
  One label per user and week: churned when the user has no event in the 30 days from label_time.
  Label times are weekly, shifted by (user_id mod 168) hours so they spread over every hour of the
  week; the first ones leave a month of history for the features, the last ones have their whole
  outcome window loaded (weekly_label_times), so no late event is missing. Every user signed up
  before label_time gets a label, not only active ones: serving scores the whole online store.
-#}

with

users as (
    select * from {{ ref('stg_app__users') }}
),

profile_changes as (
    select * from {{ ref('stg_app__profile_changes') }}
),

events as (
    select * from {{ ref('stg_app__events') }}
),

labelled as (
    {{ weekly_label_times('users', 'events', 'events', '30 days') }}
),

outcomes as (
    select
        labelled.user_id,
        labelled.label_time,
        count(outcome.user_id) = 0 as churned
    from labelled
    left join events as outcome
        on outcome.user_id = labelled.user_id
        and outcome.created_at >= labelled.label_time
        and outcome.created_at < labelled.label_time + interval '30 days'
    group by labelled.user_id, labelled.label_time
),

country_at as (
    {{ profile_as_of('outcomes', 'label_time', 'profile_changes', ['country']) }}
),

final as (
    select
        cast(outcomes.user_id as bigint) as user_id,
        {{ cast('country_at.country', 'varchar') }} as country_code,
        cast(outcomes.label_time as timestamp) as label_time,
        cast(outcomes.churned as boolean) as churned
    from outcomes
    left join country_at
        on country_at.user_id = outcomes.user_id
        and country_at.label_time = outcomes.label_time
)

select * from final
