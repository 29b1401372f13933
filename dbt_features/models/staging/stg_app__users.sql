with

source as (
    select * from {{ source('app', 'raw_users') }}
),

renamed as (
    select
        cast(user_id as bigint) as user_id,
        cast(birthdate as date) as birthdate,
        {{ utc_timestamp(source('app', 'raw_users'), 'signup_at') }} as signup_at,
        {{ utc_timestamp(source('app', 'raw_users'), 'loaded_at') }} as loaded_at
    from source
)

select * from renamed
