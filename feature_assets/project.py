"""The dbt project of the feature definitions: dbt_features next to this package (resolved from this file, never
the working directory), or the folder FEATURE_STORE_DBT_PROJECT names."""

import os
from pathlib import Path

from dagster_dbt import DbtProject

__all__ = ["dbt_project"]

_DEFAULT = Path(__file__).resolve().parent.parent / "dbt_features"

dbt_project = DbtProject(project_dir=Path(os.environ.get("FEATURE_STORE_DBT_PROJECT") or _DEFAULT).resolve())
dbt_project.prepare_if_dev()
