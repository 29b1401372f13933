with

source as (
    select * from {{ source('app', 'raw_orders') }}
),

renamed as (
    select
        cast(order_id as bigint) as order_id,
        cast(user_id as bigint) as user_id,
        {{ cast('amount', 'double precision') }} as amount,
        {{ utc_timestamp(source('app', 'raw_orders'), 'created_at') }} as created_at,
        {{ utc_timestamp(source('app', 'raw_orders'), 'loaded_at') }} as loaded_at
    from source
)

select * from renamed
