{#- Completed years from a date to a timestamp, as a person counts their age; portable across engines. -#}
{% macro whole_years_between(from_date, to_timestamp) %}
    (
        cast(extract(year from {{ to_timestamp }}) as integer)
        - cast(extract(year from {{ from_date }}) as integer)
        - case
            when cast(extract(month from {{ to_timestamp }}) as integer) * 100 + cast(extract(day from {{ to_timestamp }}) as integer)
                < cast(extract(month from {{ from_date }}) as integer) * 100 + cast(extract(day from {{ from_date }}) as integer)
            then 1
            else 0
        end
    )
{% endmacro %}
