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
  One snapshot per user per as-of time T. A snapshot sees only facts that happened strictly
  before T and were loaded at or before T, so a backfill computed today equals the snapshot
  computed live at T.
-#}

with

as_of_times as (
    {{ as_of_times() }}
),

users as (
    select * from {{ ref('stg_app__users') }}
),

profile_changes as (
    select * from {{ ref('stg_app__profile_changes') }}
),

events as (
    select * from {{ ref('stg_app__events') }}
),

orders as (
    select * from {{ ref('stg_app__orders') }}
),

users_at as (
    select
        users.user_id,
        users.birthdate,
        as_of_times.computed_at
    from users
    inner join as_of_times
        on users.signup_at < as_of_times.computed_at
        and users.loaded_at <= as_of_times.computed_at
),

profile_at as (
    {{ profile_as_of('users_at', 'computed_at', 'profile_changes', ['country', 'plan']) }}
),

events_30d as (
    select
        events.user_id,
        as_of_times.computed_at,
        count(*) as events_30d
    from events
    inner join as_of_times
        on events.created_at >= as_of_times.computed_at - interval '30 days'
        and events.created_at < as_of_times.computed_at
        and events.loaded_at <= as_of_times.computed_at
    group by events.user_id, as_of_times.computed_at
),

orders_30d as (
    select
        orders.user_id,
        as_of_times.computed_at,
        avg(orders.amount) as avg_order_30d
    from orders
    inner join as_of_times
        on orders.created_at >= as_of_times.computed_at - interval '30 days'
        and orders.created_at < as_of_times.computed_at
        and orders.loaded_at <= as_of_times.computed_at
    group by orders.user_id, as_of_times.computed_at
),

final as (
    select
        cast(users_at.user_id as bigint) as user_id,
        cast(users_at.computed_at as timestamp) as computed_at,
        cast({{ whole_years_between('users_at.birthdate', 'users_at.computed_at') }} as integer) as age,
        {{ cast('profile_at.country', 'varchar') }} as country,
        {{ cast('profile_at.plan', 'varchar') }} as plan,
        cast(coalesce(events_30d.events_30d, 0) as integer) as events_30d,
        {{ cast('orders_30d.avg_order_30d', 'double precision') }} as avg_order_30d
    from users_at
    left join profile_at
        on profile_at.user_id = users_at.user_id
        and profile_at.computed_at = users_at.computed_at
    left join events_30d
        on events_30d.user_id = users_at.user_id
        and events_30d.computed_at = users_at.computed_at
    left join orders_30d
        on orders_30d.user_id = users_at.user_id
        and orders_30d.computed_at = users_at.computed_at
)

select * from final
