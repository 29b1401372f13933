"""The model store as a Dagster resource: folders under FEATURE_STORE_HOME/models (local), or PostgreSQL, which
every run and server host sees alike (prod; see feature_assets/serving/model_store.py)."""

from typing import Literal

import dagster as dg
from pydantic import Field

from feature_assets.backends import make_model_store, model_store_choice
from feature_assets.serving.model_store import ModelStore
from feature_assets.settings import Settings

__all__ = ["ModelStoreResource", "model_store_for"]


class ModelStoreResource(dg.ConfigurableResource):
    kind: Literal["folder", "postgres"] = "folder"
    root: str = Field(default="", description="Folder holding <model>/<version>/ and <model>/current (kind=folder).")
    postgres_url: str = Field(default="", description="libpq URL (kind=postgres); a secret, pass it as an EnvVar.")
    schema_name: str = Field(default="public", description="Schema holding the model store's tables (kind=postgres).")

    def store(self) -> ModelStore:
        """A store to use in a `with` block, which closes its connection."""
        return make_model_store(self.kind, self.postgres_url, path=self.root, schema_name=self.schema_name)


def model_store_for(settings: Settings) -> ModelStoreResource:
    """The store feature_assets.backends.open_model_store opens outside Dagster, the URL passed as an EnvVar."""
    choice = model_store_choice(settings)
    if choice.url_variable:
        return ModelStoreResource(
            kind=choice.kind, postgres_url=dg.EnvVar(choice.url_variable), schema_name=choice.options["schema_name"]
        )
    return ModelStoreResource(kind=choice.kind, root=choice.options["path"])
