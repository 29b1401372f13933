{#-
  A post-hook of the feature views: PostgreSQL and DuckDB reclaim the rows the thinning deleted and refresh the
  planner's statistics. Spark needs neither: the thinning drops whole partitions, and statistics of a table this
  size are not worth a full scan every hour.
-#}
{% macro refresh_statistics() %}
    {{ return(adapter.dispatch('refresh_statistics')()) }}
{% endmacro %}

{% macro default__refresh_statistics() %}vacuum analyze {{ this }}{% endmacro %}

{% macro spark__refresh_statistics() %}{% endmacro %}
