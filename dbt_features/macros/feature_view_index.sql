{#-
  A post-hook of every model in models/features: on PostgreSQL, an index on a feature view's (entity key,
  timestamp), named by its meta.feature_view, for the point-in-time join's feature lookups, the online sync's
  "newer than the watermark" scans and point lookups. DuckDB needs none (its zone maps serve the same scans).
-#}
{% macro feature_view_index() %}
    {{ return(adapter.dispatch('feature_view_index')()) }}
{% endmacro %}

{% macro default__feature_view_index() %}{% endmacro %}

{% macro postgres__feature_view_index() %}
    {%- set view = model['config'].get('meta', {}).get('feature_view') -%}
    {%- if view -%}
        create index if not exists {{ this.identifier }}__key_time on {{ this }} ({{ view['entity_key'] }}, {{ view['timestamp'] }})
    {%- endif -%}
{% endmacro %}
