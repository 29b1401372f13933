{#-
  A raw time column of `relation` as a naive UTC timestamp, the type every model computes with.
  A timestamptz column is converted explicitly: a plain cast would give the wall time of the
  session's zone (a server's default), which shifts windows and repeats or skips DST hours. A
  plain timestamp column is UTC by convention and only cast.
-#}
{% macro utc_timestamp(relation, column) %}
    {%- set zoned = [] -%}
    {%- if execute -%}
        {%- for found in adapter.get_columns_in_relation(relation) -%}
            {%- if found.name | lower == column and found.data_type | lower in ('timestamp with time zone', 'timestamptz') -%}
                {%- do zoned.append(found.name) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if zoned -%}
        cast({{ column }} at time zone 'UTC' as timestamp)
    {%- else -%}
        cast({{ column }} as timestamp)
    {%- endif -%}
{% endmacro %}
