{#-
  The declared types of the models' contracts (varchar, double precision) as Spark spells them (string, double):
  dbt casts with this macro in contract checks and unit-test fixtures, and the models cast with it too, so one
  set of declared types serves DuckDB, PostgreSQL and Spark.
-#}
{% macro spark__cast(field, type) %}
    {%- set spark_types = {'varchar': 'string', 'text': 'string', 'double precision': 'double'} -%}
    cast({{ field }} as {{ spark_types.get(type | trim | lower, type) }})
{% endmacro %}
