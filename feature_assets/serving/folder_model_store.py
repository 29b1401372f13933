"""The model store as folders on one host's disk (the local default).

A model version is a folder <root>/<model>/<version>/ with the fitted scikit-learn pipeline (model.pkl), the rows
it was fitted and validated on (training.parquet, when kept) and its card (card.json, written last); the file
<root>/<model>/current names the version `predict` serves, and <root>/<model>/history.jsonl holds one line per
promotion.
"""

import fcntl
import json
import os
import pickle
import re
import tempfile
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feature_assets.errors import ModelStoreError
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.model_store import ModelStore

__all__ = ["FolderModelStore"]

# A model or version name is one folder name: nothing that could lead out of the root.
_NAME = re.compile(r"\w[\w.-]*")


class FolderModelStore(ModelStore):
    """Versioned model folders under one root; `current` names the served version of each model."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def _save(self, card: ModelCard, pipeline: Any, training: bytes | None) -> str:
        folder = self._version_folder(card.model, card.version)
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise self._version_exists(card.model, card.version) from None
        (folder / "model.pkl").write_bytes(pickle.dumps(pipeline))
        if training is not None:
            (folder / "training.parquet").write_bytes(training)
        card_json = asdict(card)
        del card_json["history"]  # kept in history.jsonl, as promotions happen
        (folder / "card.json").write_text(json.dumps(card_json, indent=2))
        return str(folder)

    def versions(self, model: str) -> list[str]:
        folder = self.root / model
        if not _NAME.fullmatch(model) or not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "card.json").exists())

    def current(self, model: str) -> str:
        pointer = self.root / model / "current"
        if not _NAME.fullmatch(model) or not pointer.exists():
            raise self._no_served_version(model)
        return pointer.read_text().strip()

    def served_models(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if _NAME.fullmatch(p.name) and (p / "current").exists())

    def promote(self, model: str, version: str, note: str = "") -> None:
        """A new pointer file renamed over the old one: a reader sees the old or the new pointer, never none. The
        event is appended to history.jsonl under an exclusive lock of it, held until the pointer is replaced, so
        concurrent promotions are recorded in the order they took effect."""
        self._stored(model, version)
        with open(self.root / model / "history.jsonl", "a") as history:
            fcntl.flock(history, fcntl.LOCK_EX)  # released when the file is closed
            event = {"promoted_at": datetime.now(UTC).isoformat(), "version": version, "note": note}
            history.write(json.dumps(event) + "\n")
            history.flush()
            descriptor, temporary = tempfile.mkstemp(dir=self.root / model)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(version)
            os.replace(temporary, self.root / model / "current")

    def card(self, model: str, version: str | None = None) -> ModelCard:
        folder = self._stored(model, version or self.current(model))
        card = ModelCard.from_json(json.loads((folder / "card.json").read_text()))
        return replace(card, history=self._history(model, card.version))

    def load(self, model: str, version: str | None = None) -> tuple[ModelCard, Any]:
        card = self.card(model, version)
        pipeline = pickle.loads((self._version_folder(model, card.version) / "model.pkl").read_bytes())
        return card, pipeline

    def _training_data(self, model: str, version: str) -> bytes | None:
        path = self._stored(model, version) / "training.parquet"
        return path.read_bytes() if path.exists() else None

    def _history(self, model: str, version: str) -> list[dict[str, str]]:
        path = self.root / model / "history.jsonl"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [event for event in events if event["version"] == version]

    def _version_folder(self, model: str, version: str) -> Path:
        if not (_NAME.fullmatch(model) and _NAME.fullmatch(version)):
            raise ModelStoreError(f"model {model!r} version {version!r}: a name is letters, digits, _, . and -")
        return self.root / model / version

    def _stored(self, model: str, version: str) -> Path:
        """The folder of a saved version (its card is written last), or the error naming model and version."""
        folder = self._version_folder(model, version)
        if not (folder / "card.json").exists():
            raise self._no_version(model, version)
        return folder
