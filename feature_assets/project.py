"""The dbt project of the feature definitions, as Dagster's dbt integration sees it (the folder: settings.dbt_project_dir)."""

from dagster_dbt import DbtProject

from feature_assets.settings import dbt_project_dir

__all__ = ["dbt_project"]

dbt_project = DbtProject(project_dir=dbt_project_dir())
dbt_project.prepare_if_dev()
