"""How assets show tables in the Dagster UI."""

import dagster as dg
import pandas as pd

__all__ = ["markdown_table"]


def markdown_table(frame: pd.DataFrame) -> dg.MetadataValue:
    """A frame as a Markdown table: a missing value is an empty cell, not "nan" or "None"."""
    return dg.MetadataValue.md(frame.astype(object).where(frame.notna(), None).to_markdown(index=False))
