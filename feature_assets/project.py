"""The dbt project of the feature definitions, resolved from this file (never the working directory)."""

from pathlib import Path

from dagster_dbt import DbtProject

__all__ = ["dbt_project"]

dbt_project = DbtProject(project_dir=Path(__file__).resolve().parent.parent / "dbt_features")
dbt_project.prepare_if_dev()
