{{
    config(
        unique_key='computed_at',
        incremental_strategy='insert_overwrite' if target.type == 'spark' else 'delete+insert',
        partition_by='computed_at' if target.type == 'spark' else none,
        post_hook=[
            "{{ thin_old_hourly_snapshots() }}",
            {"sql": "{{ refresh_statistics() }}", "transaction": false}
        ]
    )
}}

{#-
  One snapshot per country per as-of time T, aggregated from the user_features snapshots at T, so
  it inherits their rule: only facts that happened strictly before T and were loaded at or before T.
  Users without a country at T are left out.
-#}

with

as_of_times as (
    {{ as_of_times() }}
),

user_features as (
    select * from {{ ref('user_features') }}
),

users_at as (
    select
        user_features.country,
        user_features.computed_at,
        user_features.plan,
        user_features.events_30d,
        user_features.avg_order_30d
    from user_features
    inner join as_of_times
        on as_of_times.computed_at = user_features.computed_at
    where user_features.country is not null
),

{# Shares as a ratio of two doubles, not avg() of 1.0 / 0.0: the same IEEE division on both engines. #}
country_totals as (
    select
        users_at.country,
        users_at.computed_at,
        count(*) as country_users,
        sum(case when users_at.events_30d > 0 then 1 else 0 end) as active_users_30d,
        sum(case when users_at.plan in ('basic', 'pro') then 1 else 0 end) as paid_users,
        avg(users_at.avg_order_30d) as avg_order_30d
    from users_at
    group by users_at.country, users_at.computed_at
),

final as (
    select
        {{ cast('country_totals.country', 'varchar') }} as country_code,
        cast(country_totals.computed_at as timestamp) as computed_at,
        cast(country_totals.country_users as integer) as country_users,
        {{ cast('country_totals.active_users_30d', 'double precision') }}
        / {{ cast('country_totals.country_users', 'double precision') }} as country_active_share_30d,
        {{ cast('country_totals.paid_users', 'double precision') }}
        / {{ cast('country_totals.country_users', 'double precision') }} as country_paid_share,
        {{ cast('country_totals.avg_order_30d', 'double precision') }} as country_avg_order_30d
    from country_totals
)

select * from final
