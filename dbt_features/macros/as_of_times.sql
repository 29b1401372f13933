{#-
  The snapshot times to compute: hour boundaries from var('as_of_start') to var('as_of_end')
  every var('cadence_hours') that fall on the view's own cadence (meta refresh_hours, which
  divides a day), less those the thinning (thin_old_hourly_snapshots) would delete again:
  before the hourly retention, only the first of each day; none before the retention.
  Without vars, the current UTC hour. Values are validated here because they are spliced into
  SQL, and refused after the current hour: a future snapshot sees no facts yet, and as the
  newest snapshot it would drive the thinning of the real history.
-#}
{% macro as_of_times() %}
    {%- set now = current_utc_hour() -%}
    {%- set end = var('as_of_end', none) or now -%}
    {%- set start = var('as_of_start', none) or end -%}
    {%- set cadence = var('cadence_hours', 1) -%}
    {%- for value in [start, end] -%}
        {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:00(:00)?', value | string) -%}
            {{ exceptions.raise_compiler_error("as-of time '" ~ value ~ "' is not an hour boundary like 2026-01-31 13:00:00") }}
        {%- endif -%}
        {#- Both are 'YYYY-MM-DD HH' once the separator is a space, so the strings compare as the times do. -#}
        {%- if (value | string)[:13] | replace('T', ' ') > now[:13] -%}
            {{ exceptions.raise_compiler_error("as-of time '" ~ value ~ "' is after the current hour " ~ now ~ " (UTC): the future has no facts yet") }}
        {%- endif -%}
    {%- endfor -%}
    {%- if not (cadence | string).isdigit() or cadence | int < 1 -%}
        {{ exceptions.raise_compiler_error("cadence_hours must be a positive whole number of hours, got '" ~ cadence ~ "'") }}
    {%- endif -%}
    {%- set hourly_days = var('hourly_snapshot_retention_days') | int -%}
    {%- set days = var('snapshot_retention_days') | int -%}
    {%- set view_cadence = ((config.get('meta') or {}).get('feature_view') or {}).get('refresh_hours', 1) | int -%}
    select computed_at
    from (
        select computed_at, row_number() over (partition by cast(computed_at as date) order by computed_at) as nth_of_day
        from (
            select cast(series.computed_at as timestamp) as computed_at
            from {{ timestamp_series("cast('" ~ start ~ "' as timestamp)", "cast('" ~ end ~ "' as timestamp)", (cadence | int) ~ ' hours', 'computed_at') }}
        ) as series
        where cast(extract(hour from computed_at) as integer) % {{ view_cadence }} = 0
    ) as hours
    where computed_at >= cast('{{ end }}' as timestamp) - cast('{{ hourly_days }} days' as interval)
        or (nth_of_day = 1 and computed_at >= cast('{{ end }}' as timestamp) - cast('{{ days }} days' as interval))
{% endmacro %}

{% macro current_utc_hour() %}
    {{- return(modules.datetime.datetime.now(modules.pytz.utc).strftime('%Y-%m-%d %H:00:00')) -}}
{% endmacro %}
