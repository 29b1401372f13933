with

source as (
    select * from {{ source('app', 'raw_events') }}
),

renamed as (
    select
        cast(event_id as bigint) as event_id,
        cast(user_id as bigint) as user_id,
        {{ cast('event_type', 'varchar') }} as event_type,
        {{ utc_timestamp(source('app', 'raw_events'), 'created_at') }} as created_at,
        {{ utc_timestamp(source('app', 'raw_events'), 'loaded_at') }} as loaded_at
    from source
)

select * from renamed
