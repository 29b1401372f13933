"""The built-in pipeline's fitted parameters as numpy arithmetic: serving's fast path.

For one row, or a hundred, scikit-learn's input validation (six calls, ~0.7 ms; ~3 ms a batch) costs far more than
the arithmetic, so the transformers build_pipeline uses (imputer + scaler, one-hot) and a logistic regression are
applied with their fitted parameters in numpy; anything else through its own transform or predict.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

__all__ = ["Rows", "fitted_steps"]

Rows = Callable[[np.ndarray], np.ndarray]  # rows in, rows (encoded) or scores out


def fitted_steps(pipeline: Any, classifier: bool) -> tuple[list[Rows], Rows] | None:
    """For a Pipeline(ColumnTransformer, estimator) fitted on feature_matrix's positional columns that drops
    unlisted columns: per transformer, a function encoding rows (a 2-D object matrix in, a 2-D float matrix out), and
    one scoring the encoded rows; None for any other shape, or a pipeline fitted on a DataFrame (its columns are
    names), which are scored through the pipeline itself. test_models checks the result equals the pipeline's on
    every training row, one by one and all at once."""
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2 or not isinstance(steps[0][1], ColumnTransformer):
        return None
    if getattr(pipeline, "feature_names_in_", None) is not None:
        return None
    columns, estimator = steps[0][1], steps[1][1]
    if columns.remainder != "drop":
        return None
    encoders = [
        _numpy_encoder(transformer, list(cols)) or _transform_encoder(transformer, list(cols))
        for _, transformer, cols in columns.transformers_
        if not isinstance(transformer, str) and len(cols)
    ]
    if isinstance(estimator, LogisticRegression) and classifier and len(estimator.classes_) == 2:
        coef, intercept = estimator.coef_.T, estimator.intercept_
        return encoders, lambda rows: expit(rows @ coef + intercept)[:, 0]
    if classifier:
        return encoders, lambda rows: estimator.predict_proba(rows)[:, 1]
    return encoders, estimator.predict


def _transform_encoder(transformer: Any, columns: list[int]) -> Rows:
    def encode(rows: np.ndarray) -> np.ndarray:
        part = transformer.transform(rows[:, columns])
        return (part.toarray() if sparse.issparse(part) else np.asarray(part)).astype(float)

    return encode


def _numpy_encoder(transformer: Any, columns: list[int]) -> Rows | None:
    """The fitted parameters of SimpleImputer(+ indicator) -> StandardScaler, or of OneHotEncoder(handle_unknown=
    "ignore"), as arithmetic on rows; None for other transformers or settings."""
    if isinstance(transformer, Pipeline) and [type(step) for _, step in transformer.steps] == [
        SimpleImputer,
        StandardScaler,
    ]:
        imputer, scaler = (step for _, step in transformer.steps)
        fill = np.asarray(imputer.statistics_, dtype=float)
        if np.isnan(fill).any():  # a column empty in training, which the imputer drops
            return None
        flagged = imputer.indicator_.features_ if imputer.add_indicator else np.array([], dtype=int)
        mean = scaler.mean_ if scaler.mean_ is not None else 0.0
        scale = scaler.scale_ if scaler.scale_ is not None else 1.0

        def impute_and_scale(rows: np.ndarray) -> np.ndarray:
            numbers = rows[:, columns].astype(float)
            missing = np.isnan(numbers)
            return (np.concatenate([np.where(missing, fill, numbers), missing[:, flagged]], axis=1) - mean) / scale

        return impute_and_scale
    if isinstance(transformer, OneHotEncoder):
        if (
            transformer.handle_unknown != "ignore"
            or transformer.drop is not None
            or getattr(transformer, "infrequent_categories_", None)
        ):
            return None
        # Per column, each category's position in the output; a null (NaN) is a category of its own if seen in training.
        positions, offset = [], 0
        for categories in transformer.categories_:
            positions.append({_category(value): offset + i for i, value in enumerate(categories.tolist())})
            offset += len(categories)
        width = offset

        def one_hot(rows: np.ndarray) -> np.ndarray:
            encoded = np.zeros((len(rows), width))
            for row, values in enumerate(rows[:, columns].tolist()):
                for position, value in zip(positions, values):
                    hit = position.get(_category(value))
                    if hit is not None:  # an unseen value encodes as all zeros, as handle_unknown="ignore" does
                        encoded[row, hit] = 1.0
            return encoded

        return one_hot
    return None


_NAN = object()  # NaN never equals itself, so nulls are looked up under this key


def _category(value: Any) -> Any:
    return _NAN if isinstance(value, float) and value != value else value
