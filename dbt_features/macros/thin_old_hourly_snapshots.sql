{#-
  Keeps the history bounded: hourly snapshots older than var('hourly_snapshot_retention_days')
  before the newest snapshot are deleted, except the midnight one of each day.
-#}
{% macro thin_old_hourly_snapshots() %}
    {%- set days = var('hourly_snapshot_retention_days') | int -%}
    delete from {{ this }}
    where computed_at < (select max(computed_at) from {{ this }}) - cast('{{ days }} days' as interval)
        and extract(hour from computed_at) <> 0
{% endmacro %}
