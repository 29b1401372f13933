with

source as (
    select * from {{ source('app', 'raw_events') }}
),

renamed as (
    select
        cast(event_id as bigint) as event_id,
        cast(user_id as bigint) as user_id,
        cast(event_type as varchar) as event_type,
        cast(created_at as timestamp) as created_at,
        cast(loaded_at as timestamp) as loaded_at
    from source
)

select * from renamed
