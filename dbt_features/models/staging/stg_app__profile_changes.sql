with

source as (
    select * from {{ source('app', 'raw_profile_changes') }}
),

renamed as (
    select
        cast(user_id as bigint) as user_id,
        {{ utc_timestamp(source('app', 'raw_profile_changes'), 'changed_at') }} as changed_at,
        {{ cast('country', 'varchar') }} as country,
        {{ cast('plan', 'varchar') }} as plan,
        {{ utc_timestamp(source('app', 'raw_profile_changes'), 'loaded_at') }} as loaded_at
    from source
)

select * from renamed
