"""The model store as a Dagster resource: versioned model folders under FEATURE_STORE_HOME/models."""

import dagster as dg
from pydantic import Field

from feature_assets.serving.models import ModelStore
from feature_assets.settings import Settings

__all__ = ["ModelStoreResource", "model_store_for"]


class ModelStoreResource(dg.ConfigurableResource):
    root: str = Field(description="Folder holding <model>/<version>/ and <model>/current.")

    def store(self) -> ModelStore:
        return ModelStore(self.root)


def model_store_for(settings: Settings) -> ModelStoreResource:
    return ModelStoreResource(root=str(settings.models_path))
