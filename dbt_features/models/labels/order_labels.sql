{#-
  One label per sampled order (every 20th order_id, to keep training small): the order's user, its
  time and amount (the request field a checkout sends), and ordered_again_30d: whether the user
  orders again in the 30 days after it. Only orders whose 30 days ended late_arrival_days before
  the newest load of orders, so no late order is missing, and a month after the first order.
-#}

with

orders as (
    select * from {{ ref('stg_app__orders') }}
),

observed as (
    select
        max(orders.loaded_at) - cast('{{ var("late_arrival_days") | int }} days' as interval) as observed_until,
        min(orders.created_at) + interval '30 days' as first_label_time
    from orders
),

sampled as (
    select
        orders.order_id,
        orders.user_id,
        orders.created_at,
        orders.amount
    from orders
    cross join observed
    where
        orders.order_id % 20 = 0
        and orders.created_at + interval '30 days' <= observed.observed_until
        and orders.created_at >= observed.first_label_time
),

outcomes as (
    select
        sampled.order_id,
        count(later.order_id) > 0 as ordered_again_30d
    from sampled
    left join orders as later
        on later.user_id = sampled.user_id
        and later.created_at > sampled.created_at
        and later.created_at <= sampled.created_at + interval '30 days'
    group by sampled.order_id
),

final as (
    select
        cast(sampled.order_id as bigint) as order_id,
        cast(sampled.user_id as bigint) as user_id,
        cast(sampled.created_at as timestamp) as label_time,
        {{ cast('sampled.amount', 'double precision') }} as order_amount,
        cast(outcomes.ordered_again_30d as boolean) as ordered_again_30d
    from sampled
    inner join outcomes on sampled.order_id = outcomes.order_id
)

select * from final
