{#-
  The (user_id, label_time) rows of a weekly label table: label times weekly, shifted by
  (user_id mod 168) hours so they spread over every hour of the week; the first a month after the
  first event (history for the features), the last with its whole outcome window observed. A
  window is observed once every row created in it has been loaded: it ended at least
  var('late_arrival_days') before the newest load of `outcomes`, as rows arrive at most that late.
  A later window would miss late rows, and its labels would lean to no activity and no revenue.
  Every user signed up before label_time gets a label, not only active ones: serving scores the
  whole online store. `users`, `events` and `outcomes` name relations (or CTEs).
-#}
{% macro weekly_label_times(users, events, outcomes, outcome_window) %}
    with

    history as (
        select min(events.created_at) as first_event
        from {{ events }} as events
    ),

    observed as (
        select max(outcomes.loaded_at) - cast('{{ var("late_arrival_days") | int }} days' as interval) as observed_until
        from {{ outcomes }} as outcomes
    ),

    weeks as (
        select series.k
        from {{ integer_series(0, 1000, 'k') }}
    ),

    label_weeks as (
        select weekly.week_end
        from (
            select
                cast(date_trunc('day', observed.observed_until) as timestamp)
                    - interval '{{ outcome_window }}'
                    - weeks.k * interval '7 days' as week_end
            from weeks
            cross join observed
        ) as weekly
        cross join history
        where weekly.week_end >= history.first_event + interval '30 days'
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
    cross join history
    where candidates.label_time >= history.first_event + interval '30 days'
        and candidates.signup_at < candidates.label_time
{% endmacro %}
