"""The dbt project of the feature definitions, as Dagster's dbt integration sees it."""

from pathlib import Path

from dagster_dbt import DbtProject

__all__ = ["dbt_project"]


def dbt_project(project_dir: Path) -> DbtProject:
    """A function, not a module-level object: which project (the settings' folder, or a test's copy) is chosen where
    the definitions are built, and importing reads neither the environment nor the manifest."""
    return DbtProject(project_dir=project_dir)
