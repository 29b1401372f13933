{#-
  The (user_id, label_time) rows of a weekly label table: label times weekly, shifted by
  (user_id mod 168) hours so they spread over every hour of the week; the first a month after the
  first event (history for the features), the last a full outcome window before the day of the
  newest event (every outcome observed). Every user signed up before label_time gets a label, not
  only active ones: serving scores the whole online store. `users` and `events` name relations (or CTEs) of users and events.
-#}
{% macro weekly_label_times(users, events, outcome_window) %}
    with

    bounds as (
        select
            min(events.created_at) as first_event,
            max(events.created_at) as last_event
        from {{ events }} as events
    ),

    weeks as (
        select series.k
        from generate_series(0, 1000) as series (k)
    ),

    label_weeks as (
        select weekly.week_end
        from (
            select
                cast(date_trunc('day', bounds.last_event) as timestamp)
                    - interval '{{ outcome_window }}'
                    - weeks.k * interval '7 days' as week_end
            from weeks
            cross join bounds
        ) as weekly
        cross join bounds
        where weekly.week_end >= bounds.first_event + interval '30 days'
    ),

    candidates as (
        select
            users.user_id,
            users.signup_at,
            label_weeks.week_end - (users.user_id % 168) * interval '1 hour' as label_time
        from {{ users }} as users
        cross join label_weeks
    )

    select
        candidates.user_id,
        candidates.label_time
    from candidates
    cross join bounds
    where candidates.label_time >= bounds.first_event + interval '30 days'
        and candidates.signup_at < candidates.label_time
{% endmacro %}
