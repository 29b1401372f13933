"""The model store: each model's versions (a card and a fitted pipeline) and the pointer to the version `predict`
serves. Two implementations honour one contract (feature_assets_tests/test_model_store.py runs against each):
folders under FEATURE_STORE_HOME/models (local default), and PostgreSQL, which every server host and training run
sees alike (prod). feature_assets.backends.open_model_store picks one from the settings."""

from abc import ABC, abstractmethod
from typing import Any

from feature_assets.errors import ModelStoreError
from feature_assets.serving.model_card import ModelCard

__all__ = ["ModelStore"]


class ModelStore(ABC):
    """Versions of each model and the one served. A version, once saved, never changes; promoting is atomic (a
    reader sees the old or the new pointer, never none or a mix)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages: never a password."""

    @abstractmethod
    def save(self, card: ModelCard, pipeline: Any) -> str:
        """Stores card.version of card.model, refusing a version that exists; returns where it went."""

    @abstractmethod
    def versions(self, model: str) -> list[str]:
        """The stored versions of `model`, in ascending order (versions are UTC timestamps: oldest first)."""

    @abstractmethod
    def current(self, model: str) -> str:
        """The version `predict` serves."""

    @abstractmethod
    def promote(self, model: str, version: str) -> None:
        """Makes a stored `version` the served one, atomically."""

    @abstractmethod
    def card(self, model: str, version: str | None = None) -> ModelCard:
        """The card of `version`, or of the served version."""

    @abstractmethod
    def load(self, model: str, version: str | None = None) -> tuple[ModelCard, Any]:
        """The card and fitted pipeline of `version`, or of the served version."""

    def close(self) -> None:  # noqa: B027  # optional: a store without a connection has nothing to release
        """Releases the store's connection, if it holds one."""

    def __enter__(self) -> "ModelStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _no_served_version(self, model: str) -> ModelStoreError:
        return ModelStoreError(f"model {model!r} has no served version in {self.describe()}; materialize {model} first")

    def _no_version(self, model: str, version: str) -> ModelStoreError:
        return ModelStoreError(f"model {model!r} has no version {version!r} in {self.describe()}")

    def _version_exists(self, model: str, version: str) -> ModelStoreError:
        return ModelStoreError(
            f"model {model!r} already has a version {version!r} in {self.describe()}; versions never change"
        )
