"""As-of times: the hour boundaries (naive UTC) that feature snapshots are stamped with."""

from datetime import UTC, date, datetime

from feature_assets.errors import ConfigError

__all__ = ["current_hour", "format_hour", "parse_day", "parse_hour", "utc_now"]


def utc_now() -> datetime:
    """Now as a naive UTC time, the form every stored time takes."""
    return datetime.now(UTC).replace(tzinfo=None)


def current_hour() -> datetime:
    return utc_now().replace(minute=0, second=0, microsecond=0)


def parse_hour(value: str, what: str) -> datetime:
    """Parses an ISO time that must be an hour boundary, not after the current hour; a timezone, if given, is
    converted to UTC.

    A future snapshot would see no facts yet (ages advanced, windows empty), and as the newest snapshot it
    would drive retention and the sync watermark: the real history would be thinned and later hours skipped.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an ISO time like 2026-01-31T13:00") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    if parsed != parsed.replace(minute=0, second=0, microsecond=0):
        raise ConfigError(f"{what} {value!r} is not an hour boundary (minutes and seconds must be 0)")
    now = current_hour()
    if parsed > now:
        raise ConfigError(
            f"{what} {value!r} is after the current hour {format_hour(now)} (UTC): the future has no facts yet"
        )
    return parsed


def parse_day(value: str, what: str) -> date:
    """Parses an as-of day (UTC) like 2026-01-31, not after today: days are the feature views' partitions."""
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a day like 2026-01-31") from None
    today = current_hour().date()
    if parsed > today:
        raise ConfigError(f"{what} {value!r} is after today {today} (UTC): the future has no facts yet")
    return parsed


def format_hour(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")
