with

source as (
    select * from {{ source('app', 'raw_profile_changes') }}
),

renamed as (
    select
        cast(user_id as bigint) as user_id,
        cast(changed_at as timestamp) as changed_at,
        cast(country as varchar) as country,
        cast(plan as varchar) as plan,
        cast(loaded_at as timestamp) as loaded_at
    from source
)

select * from renamed
