"""The training rows a model version was fitted and validated on, kept with it in the model store as Parquet.

A version's rows can be read back as long as the version is kept (`ModelStore.training_set`): to see what a model
learnt from, to refit or compare in a notebook, or to audit a prediction. The card holds their summary, and the
checksum in it is verified on every read, so rows that were changed or cut short are refused, never served as
the version's own.

Where: training.parquet in the version's folder (folder store), a row of model_training_sets (PostgreSQL). Size,
measured on the demo (`featurestore demo`: 2,000 users over 300 days): churn_model keeps 32,910 rows of 16 columns
in 641 KB, ltv_model 11,893 rows of 11 columns in 223 KB (about 20 bytes a row; their pipelines take 3 KB and
720 KB).
"""

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import pandas as pd

from feature_assets.errors import ModelStoreError

__all__ = ["TrainingRows", "decode_training_rows", "encode_training_rows"]

FORMAT = "parquet"


@dataclass(frozen=True)
class TrainingRows:
    """The rows as stored (Parquet bytes) and their summary, the card's `training`."""

    data: bytes
    summary: dict[str, Any]


def encode_training_rows(frame: pd.DataFrame) -> TrainingRows:
    """`frame` as Parquet (pyarrow; the index is not kept) with its summary: rows, columns, bytes, format and the
    sha256 of the bytes."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=False)
    data = buffer.getvalue()
    summary = {
        "format": FORMAT,
        "rows": len(frame),
        "columns": [str(column) for column in frame.columns],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return TrainingRows(data, summary)


def decode_training_rows(data: bytes, summary: dict[str, Any], *, what: str = "the training rows") -> pd.DataFrame:
    """The rows stored as `data`, refused (ModelStoreError naming `what`, e.g. "model 'churn_model' version 'v1'")
    unless their checksum is the summary's."""
    if summary.get("format") != FORMAT:
        raise ModelStoreError(f"{what}: training rows in format {summary.get('format')!r}; this version reads parquet")
    checksum = hashlib.sha256(data).hexdigest()
    if checksum != summary.get("sha256"):
        raise ModelStoreError(
            f"{what}: the kept training rows do not match the card's checksum ({len(data)} bytes with sha256 "
            f"{checksum[:12]}..., the card says {summary.get('bytes')} bytes with {str(summary.get('sha256'))[:12]}...)"
            "; they were changed or cut short"
        )
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")
