{#-
  Keeps the history bounded: snapshots older than var('hourly_snapshot_retention_days') before
  the newest one are thinned to the first snapshot of each day (whatever hour that is), and
  snapshots older than var('snapshot_retention_days') are deleted. The newest one counts no later
  than the current hour: a snapshot stamped in the future must not collapse the real history.
-#}
{% macro thin_old_hourly_snapshots() %}
    {%- set hourly_days = var('hourly_snapshot_retention_days') | int -%}
    {%- set days = var('snapshot_retention_days') | int -%}
    {%- set newest = "least((select max(computed_at) from " ~ this ~ "), cast('" ~ current_utc_hour() ~ "' as timestamp))" -%}
    delete from {{ this }}
    where computed_at < {{ newest }} - cast('{{ days }} days' as interval)
        or (
            computed_at < {{ newest }} - cast('{{ hourly_days }} days' as interval)
            and computed_at not in (
                select min(computed_at) from {{ this }} group by cast(computed_at as date)
            )
        )
{% endmacro %}
