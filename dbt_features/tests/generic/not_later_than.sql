{#- Fails on rows whose timestamp lies after its bound, e.g. an event loaded before it happened. -#}
{% test not_later_than(model, column_name, bound) %}
select *
from {{ model }}
where {{ column_name }} > {{ bound }}
{% endtest %}
