{#-
  Keeps the history bounded: snapshots older than var('hourly_snapshot_retention_days') before
  the newest one are thinned to the first snapshot of each day (whatever hour that is), and
  snapshots older than var('snapshot_retention_days') are deleted. The newest one counts no later
  than the current hour: a snapshot stamped in the future must not collapse the real history.
-#}
{% macro thin_old_hourly_snapshots() %}
    {{ return(adapter.dispatch('thin_old_hourly_snapshots')()) }}
{% endmacro %}

{% macro default__thin_old_hourly_snapshots() %}
    delete from {{ this }}
    where {{ thinned_snapshots() }}
{% endmacro %}

{#- Spark deletes no rows from Parquet tables: the thinned as-of times, each a partition, are dropped. -#}
{% macro spark__thin_old_hourly_snapshots() %}
    {%- if execute -%}
        {%- set thinned = run_query('select distinct computed_at from ' ~ this ~ ' where ' ~ thinned_snapshots()).columns[0].values() -%}
        {%- if thinned | length > 0 -%}
            alter table {{ this }} drop if exists
            {%- for computed_at in thinned | sort %}
                partition (computed_at = timestamp '{{ computed_at.strftime("%Y-%m-%d %H:%M:%S") }}'){{ "," if not loop.last }}
            {%- endfor -%}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}

{#- The snapshots the thinning removes, as a condition on computed_at. -#}
{% macro thinned_snapshots() %}
    {%- set hourly_days = var('hourly_snapshot_retention_days') | int -%}
    {%- set days = var('snapshot_retention_days') | int -%}
    {%- set newest = "least((select max(computed_at) from " ~ this ~ "), cast('" ~ current_utc_hour() ~ "' as timestamp))" -%}
    computed_at < {{ newest }} - cast('{{ days }} days' as interval)
        or (
            computed_at < {{ newest }} - cast('{{ hourly_days }} days' as interval)
            and computed_at not in (
                select min(computed_at) from {{ this }} group by cast(computed_at as date)
            )
        )
{% endmacro %}
