"""The model store: each model's versions (a card, a fitted pipeline and the training rows it was fitted on) and the
pointer to the version `predict` serves, with the history of its promotions. Two implementations honour one
contract (feature_assets_tests/test_model_store.py runs against each): folders under FEATURE_STORE_HOME/models
(local default), and PostgreSQL, which every server host and training run sees alike (prod).
feature_assets.backends.open_model_store picks one from the settings."""

import hashlib
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from feature_assets.errors import ModelStoreError
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.training_rows import decode_training_rows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ModelStore"]


class ModelStore(ABC):
    """Versions of each model and the one served. A version, once saved, never changes; promoting is atomic (a
    reader sees the old or the new pointer, never none or a mix)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages: never a password."""

    def save(self, card: ModelCard, pipeline: Any, training: bytes | None = None) -> str:
        """Stores card.version of card.model, refusing a version that exists; returns where it went.

        training: the rows it was fitted and validated on, as training_rows.encode_training_rows encodes them, whose
        summary is card.training; refused when the two do not match. The card's history is the store's own record
        of promotions, so none is saved with it.
        """
        self._check_training(card, training)
        return self._save(replace(card, history=[]), pipeline, training)

    @abstractmethod
    def _save(self, card: ModelCard, pipeline: Any, training: bytes | None) -> str:
        """Stores a version whose training bytes were checked against its card."""

    @abstractmethod
    def versions(self, model: str) -> list[str]:
        """The stored versions of `model`, in ascending order (versions are UTC timestamps: oldest first)."""

    @abstractmethod
    def current(self, model: str) -> str:
        """The version `predict` serves."""

    @abstractmethod
    def served_models(self) -> list[str]:
        """Every model with a served version, by name (those saved from Python among them)."""

    @abstractmethod
    def promote(self, model: str, version: str, note: str = "") -> None:
        """Makes a stored `version` the served one, atomically, and records the event {"promoted_at" (ISO, UTC),
        "version", "note"} in the model's history, in the order of the promotions."""

    @abstractmethod
    def card(self, model: str, version: str | None = None) -> ModelCard:
        """The card of `version`, or of the served version, its history the events that promoted it."""

    @abstractmethod
    def load(self, model: str, version: str | None = None) -> tuple[ModelCard, Any]:
        """The card (as `card` gives it) and fitted pipeline of `version`, or of the served version."""

    @abstractmethod
    def _training_data(self, model: str, version: str) -> bytes | None:
        """The training rows kept with a stored version, as saved; None if it kept none."""

    def training_set(self, model: str, version: str | None = None) -> "pd.DataFrame":
        """The rows `version` (or the served version) was fitted and validated on, checked against its card;
        ModelStoreError when it kept none (versions saved before training rows were kept)."""
        card = self.card(model, version)
        what = f"model {model!r} version {card.version!r}"
        if card.training is None:
            raise ModelStoreError(
                f"{what} kept no training rows in {self.describe()}; versions saved before training rows were kept "
                "with each version have none"
            )
        data = self._training_data(model, card.version)
        if data is None:
            raise ModelStoreError(f"{what}: its training rows are missing from {self.describe()}")
        return decode_training_rows(data, card.training, what=what)

    def close(self) -> None:  # noqa: B027  # optional: a store without a connection has nothing to release
        """Releases the store's connection, if it holds one."""

    def __enter__(self) -> "ModelStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_training(self, card: ModelCard, training: bytes | None) -> None:
        what = f"model {card.model!r} version {card.version!r}"
        if training is None:
            if card.training is not None:
                raise ModelStoreError(f"{what}: its card describes kept training rows, but none were given to save")
            return
        if card.training is None:
            raise ModelStoreError(
                f"{what}: training rows given without their summary in the card (card.training); encode them with "
                "encode_training_rows and put its summary in the card"
            )
        checksum = hashlib.sha256(training).hexdigest()
        if checksum != card.training.get("sha256") or len(training) != card.training.get("bytes"):
            raise ModelStoreError(
                f"{what}: the training rows given are not the ones its card describes (another checksum or size)"
            )

    def _no_served_version(self, model: str) -> ModelStoreError:
        return ModelStoreError(f"model {model!r} has no served version in {self.describe()}; materialize {model} first")

    def _no_version(self, model: str, version: str) -> ModelStoreError:
        return ModelStoreError(f"model {model!r} has no version {version!r} in {self.describe()}")

    def _version_exists(self, model: str, version: str) -> ModelStoreError:
        return ModelStoreError(
            f"model {model!r} already has a version {version!r} in {self.describe()}; versions never change"
        )
