{#-
  Rows of a series, as a relation with one column: timestamps from `start` to `end` every `step` (an interval
  literal such as '6 hours'), or whole numbers from `first` to `last`. Spark has no generate_series: it explodes
  a sequence.
-#}
{% macro timestamp_series(start, end, step, column) %}
    {{ return(adapter.dispatch('timestamp_series')(start, end, step, column)) }}
{% endmacro %}

{% macro default__timestamp_series(start, end, step, column) %}
    generate_series({{ start }}, {{ end }}, cast('{{ step }}' as interval)) as series ({{ column }})
{% endmacro %}

{% macro spark__timestamp_series(start, end, step, column) %}
    (select explode(sequence({{ start }}, {{ end }}, interval '{{ step }}')) as {{ column }}) as series
{% endmacro %}

{% macro integer_series(first, last, column) %}
    {{ return(adapter.dispatch('integer_series')(first, last, column)) }}
{% endmacro %}

{% macro default__integer_series(first, last, column) %}
    generate_series({{ first }}, {{ last }}) as series ({{ column }})
{% endmacro %}

{% macro spark__integer_series(first, last, column) %}
    (select explode(sequence({{ first }}, {{ last }})) as {{ column }}) as series
{% endmacro %}
