{% test hour_boundary(model, column_name) %}
select *
from {{ model }}
where {{ column_name }} <> date_trunc('hour', {{ column_name }})
{% endtest %}
