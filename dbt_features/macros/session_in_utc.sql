{#- Every model's session computes in UTC (a pre-hook of the project): as-of times and label times are UTC hours. -#}
{% macro session_in_utc() %}
    {{ return(adapter.dispatch('session_in_utc')()) }}
{% endmacro %}

{% macro default__session_in_utc() %}set timezone = 'UTC'{% endmacro %}

{% macro spark__session_in_utc() %}set time zone 'UTC'{% endmacro %}
