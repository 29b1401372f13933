with

source as (
    select * from {{ source('app', 'raw_orders') }}
),

renamed as (
    select
        cast(order_id as bigint) as order_id,
        cast(user_id as bigint) as user_id,
        cast(amount as double precision) as amount,
        cast(created_at as timestamp) as created_at,
        cast(loaded_at as timestamp) as loaded_at
    from source
)

select * from renamed
