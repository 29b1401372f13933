"""The model store as a Dagster resource: folders under FEATURE_STORE_HOME/models (local), or PostgreSQL, which
every run and server host sees alike (prod; see feature_assets/serving/model_store.py)."""

from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.serving.folder_model_store import FolderModelStore
from feature_assets.serving.model_store import ModelStore
from feature_assets.serving.postgres_model_store import PostgresModelStore
from feature_assets.settings import Settings

__all__ = ["ModelStoreResource", "model_store_for"]


class ModelStoreResource(dg.ConfigurableResource):
    kind: Literal["folder", "postgres"] = "folder"
    root: str = Field(default="", description="Folder holding <model>/<version>/ and <model>/current (kind=folder).")
    postgres_url: str = Field(default="", description="libpq URL (kind=postgres); a secret, pass it as an EnvVar.")
    schema_name: str = Field(default="public", description="Schema holding the model store's tables (kind=postgres).")

    def store(self) -> ModelStore:
        """A store to use in a `with` block, which closes its connection."""
        if self.kind == "postgres":
            return PostgresModelStore(self.postgres_url, self.schema_name)
        return FolderModelStore(self.root)


def model_store_for(settings: Settings) -> ModelStoreResource:
    """The store serving/model_store.open_model_store opens outside Dagster, the URL passed as an EnvVar."""
    if settings.model_store_url_variable:
        return ModelStoreResource(
            kind="postgres",
            postgres_url=dg.EnvVar(settings.model_store_url_variable),
            schema_name=settings.postgres_schema,
        )
    return ModelStoreResource(root=str(settings.models_path))
