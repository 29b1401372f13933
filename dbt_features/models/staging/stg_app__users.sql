with

source as (
    select * from {{ source('app', 'raw_users') }}
),

renamed as (
    select
        cast(user_id as bigint) as user_id,
        cast(birthdate as date) as birthdate,
        cast(signup_at as timestamp) as signup_at,
        cast(loaded_at as timestamp) as loaded_at
    from source
)

select * from renamed
