"""The skew report's pictures of one feature: training next to serving, as a line of text bars and as a PNG
histogram in markdown, on the same bins (or the same largest categories)."""

import base64
import io

import numpy as np
import pandas as pd

from feature_assets.skew import category_shares, feature_kind, numeric_values

__all__ = ["histogram_markdown", "histogram_sparkline"]


_MAX_PLOTTED_CATEGORIES = 12


def _numeric_plot_edges(values: np.ndarray, bins: int) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if np.all(values == np.round(values)) and high - low <= 4 * bins:
        return np.arange(low - 0.5, high + 1.5)  # one bar per integer: no aliasing for counts and bools
    if low == high:
        return np.array([low - 0.5, high + 0.5])
    return np.linspace(low, high, 2 * bins + 1)


def _side_label(side: str, series: pd.Series) -> str:
    null_rate = f", {series.isna().mean():.1%} null" if len(series) else ""
    return f"{side} (n={len(series):,}{null_rate})"


_BARS = "▁▂▃▄▅▆▇█"


def histogram_sparkline(training: pd.Series, serving: pd.Series, feature: str, dtype: str, bins: int = 10) -> str:
    """Training and serving shares of non-null values as two rows of bars on the same bins (or the same largest
    categories), one line of text: short enough for the UI to show without a click, where the PNG needs one.
    A bin that is empty on one side is "·"; bar heights share one scale across both sides."""
    if feature_kind(dtype) == "numeric":
        t_all, s_all = numeric_values(training, feature, "training"), numeric_values(serving, feature, "serving")
        t, s = t_all[np.isfinite(t_all)], s_all[np.isfinite(s_all)]
        both = np.concatenate([t, s])
        if not len(both):
            return "no non-null values"
        low, high = float(both.min()), float(both.max())
        edges = np.linspace(low, high, bins + 1) if high > low else np.array([low - 0.5, high + 0.5])
        shares = [np.histogram(v, bins=edges)[0] / max(len(v), 1) for v in (t, s)]
        scale = f"{low:.3g} .. {high:.3g}"
    else:
        frame = category_shares(training.astype("string"), serving.astype("string"))
        if frame.empty:
            return "no non-null values"
        frame = frame.loc[frame.max(axis=1).sort_values(ascending=False, kind="stable").index][:bins]
        shares = [frame["training"].to_numpy(), frame["serving"].to_numpy()]
        scale = ", ".join(frame.index)
    top = max(float(np.max(side)) for side in shares) or 1.0
    rows = [
        "".join(_BARS[min(int(share / top * len(_BARS)), len(_BARS) - 1)] if share > 0 else "·" for share in side)
        for side in shares
    ]
    return f"training {rows[0]}   serving {rows[1]}   ({scale})"


def histogram_markdown(training: pd.Series, serving: pd.Series, feature: str, dtype: str, bins: int = 10) -> str:
    """A PNG of training vs serving shares of non-null values (same bins or categories for both sides),
    titled with the feature name, as Markdown `![feature](data:image/png;base64,...)`.

    Numeric: overlaid histograms on equal-width bins spanning both sides (one bar per value for small
    integer ranges). Categorical: side-by-side bars per category, the categories with the largest
    shares first and the rest as "(other)".
    """
    from matplotlib.figure import Figure  # the Figure alone renders through Agg: pyplot's global state stays untouched

    figure = Figure(figsize=(5, 3), dpi=80, layout="constrained")
    axes = figure.add_subplot()
    training_label, serving_label = _side_label("training", training), _side_label("serving", serving)
    if feature_kind(dtype) == "numeric":
        t_all, s_all = numeric_values(training, feature, "training"), numeric_values(serving, feature, "serving")
        t, s = t_all[np.isfinite(t_all)], s_all[np.isfinite(s_all)]
        both = np.concatenate([t, s])
        if len(both):
            edges = _numeric_plot_edges(both, bins)
            for values, label, color in ((t, training_label, "tab:blue"), (s, serving_label, "tab:orange")):
                counts = np.histogram(values, bins=edges)[0]
                shares = counts / len(values) if len(values) else counts.astype(float)
                axes.stairs(shares, edges, fill=True, alpha=0.45, color=color, label=label)
    else:
        t_cat, s_cat = training.astype("string"), serving.astype("string")
        if t_cat.count() or s_cat.count():
            shares = category_shares(t_cat, s_cat)
            shares = shares.loc[shares.max(axis=1).sort_values(ascending=False, kind="stable").index]
            if len(shares) > _MAX_PLOTTED_CATEGORIES:
                kept = shares.iloc[: _MAX_PLOTTED_CATEGORIES - 1]
                rest = shares.iloc[_MAX_PLOTTED_CATEGORIES - 1 :].sum().rename("(other)")
                shares = pd.concat([kept, rest.to_frame().T])
            positions = np.arange(len(shares))
            axes.bar(positions - 0.2, shares["training"], width=0.4, label=training_label, color="tab:blue")
            axes.bar(positions + 0.2, shares["serving"], width=0.4, label=serving_label, color="tab:orange")
            axes.set_xticks(positions, [label[:14] for label in shares.index], rotation=30, ha="right", fontsize=8)
    if not axes.has_data():
        axes.text(0.5, 0.5, "no non-null values", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.legend(fontsize=7)
    axes.set_title(feature, fontsize=10)
    axes.set_ylabel("share of non-null values", fontsize=8)
    axes.tick_params(labelsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![{feature}](data:image/png;base64,{encoded})"
