{#-
  Logs the as-of times a build of a feature view computed, with the build's start (UTC). The online sync
  reads the log to notice an as-of time it already copied being rebuilt (a backfill after raw data was
  corrected) and then rewrites the online store in full.
-#}
{% macro log_feature_build() %}
    {%- set log = this.schema ~ '.featurestore_builds' -%}
    {#- A statement of its own: Spark takes one statement per call. -#}
    {%- if execute -%}
        {%- do run_query(
            'create table if not exists ' ~ log ~ ' as select ' ~ cast('null', 'varchar') ~ ' as view_name,'
            ~ ' cast(null as timestamp) as computed_at, cast(null as timestamp) as built_at where 1 = 0'
        ) -%}
    {%- endif %}
    insert into {{ log }}
    select
        '{{ this.identifier }}' as view_name,
        built.computed_at,
        cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}' as timestamp) as built_at
    from ({{ as_of_times() }}) as built
{% endmacro %}
