{#-
  One label per user and week: churned when the user has no event in the 30 days from label_time.
  Label times are weekly, shifted by (user_id mod 168) hours so they spread over every hour of the
  week; the first ones leave a month of history for the features, the last ones end a full outcome
  window before the day of the newest event, so every outcome is observed. Every user signed up
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
            - interval '30 days'
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
        count(outcome.user_id) = 0 as churned
    from labelled
    left join events as outcome
        on outcome.user_id = labelled.user_id
        and outcome.created_at >= labelled.label_time
        and outcome.created_at < labelled.label_time + interval '30 days'
    group by labelled.user_id, labelled.label_time
),

{#- The same bitemporal rule as user_features: changed strictly before label_time, loaded at or before it. #}
profile_ranked as (
    select
        outcomes.user_id,
        outcomes.label_time,
        profile_changes.country,
        row_number() over (
            partition by outcomes.user_id, outcomes.label_time
            order by profile_changes.changed_at desc, profile_changes.loaded_at desc
        ) as recency
    from outcomes
    inner join profile_changes
        on profile_changes.user_id = outcomes.user_id
        and profile_changes.changed_at < outcomes.label_time
        and profile_changes.loaded_at <= outcomes.label_time
),

country_at as (
    select
        profile_ranked.user_id,
        profile_ranked.label_time,
        profile_ranked.country
    from profile_ranked
    where profile_ranked.recency = 1
),

final as (
    select
        cast(outcomes.user_id as bigint) as user_id,
        cast(country_at.country as varchar) as country_code,
        cast(outcomes.label_time as timestamp) as label_time,
        cast(outcomes.churned as boolean) as churned
    from outcomes
    left join country_at
        on country_at.user_id = outcomes.user_id
        and country_at.label_time = outcomes.label_time
)

select * from final
