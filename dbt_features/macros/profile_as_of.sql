{#-
  Each entity's profile as of its time: the latest profile change made strictly before the time
  and loaded at or before it (bitemporal, so a backfill equals what was known live then).
  entities: a relation with user_id and time_column; profile_changes: stg_app__profile_changes;
  columns: the profile columns to keep. One row per (user_id, time_column) that has a change.
  user_features and churn_labels both read the profile this way, so they agree on it.
-#}
{% macro profile_as_of(entities, time_column, profile_changes, columns) %}
    select user_id, {{ time_column }}, {{ columns | join(', ') }}
    from (
        select
            {{ entities }}.user_id,
            {{ entities }}.{{ time_column }},
            {%- for column in columns %}
            {{ profile_changes }}.{{ column }},
            {%- endfor %}
            row_number() over (
                partition by {{ entities }}.user_id, {{ entities }}.{{ time_column }}
                order by {{ profile_changes }}.changed_at desc, {{ profile_changes }}.loaded_at desc
            ) as recency
        from {{ entities }}
        inner join {{ profile_changes }}
            on {{ profile_changes }}.user_id = {{ entities }}.user_id
            and {{ profile_changes }}.changed_at < {{ entities }}.{{ time_column }}
            and {{ profile_changes }}.loaded_at <= {{ entities }}.{{ time_column }}
    ) as profile_ranked
    where recency = 1
{% endmacro %}
