{#-
  Rows whose number is infinite or NaN. Such values pass not_null and range tests, then turn every
  average they enter into inf or NaN. The failing rows are kept in a table (store_failures) whose
  name dbt prints.
-#}
{% test finite(model, column_name) %}
    {{ config(store_failures=true) }}
    select *
    from {{ model }}
    where {{ cast(column_name, 'double precision') }} in (
        {{ cast("'Infinity'", 'double precision') }},
        {{ cast("'-Infinity'", 'double precision') }},
        {{ cast("'NaN'", 'double precision') }}
    )
{% endtest %}
