"""The online store contract, run against every kind: a single Redis, a Redis Cluster, a TLS Redis and SQLite."""

import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_assets.errors import ConfigError, DataError, RegistryError
from feature_assets.registry import Feature, FeatureView
from feature_assets.serving import FeatureReader, RedisOnlineStore, SqliteOnlineStore, SyncRecord, encode_batch
from feature_assets.serving.codec import view_schema

BIG, SMALL = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def make_view(ttl: timedelta = timedelta(days=2)) -> FeatureView:
    features = (
        Feature("count", "int64", "bigint", "", "count-v1"),
        Feature("score", "float64", "double precision", "", "score-v1"),
        Feature("label", "string", "varchar", "", "label-v1"),
        Feature("active", "bool", "boolean", "", "active-v1"),
    )
    return FeatureView("thing_features", "thing", "thing_id", "computed_at", ttl, features, "checksum")


VIEW = make_view()
DEFINITIONS = tuple((f.name, f.definition_checksum) for f in VIEW.features)


def snapshot_rows(hour: datetime) -> tuple[list[datetime], pd.DataFrame]:
    """Snapshot times within the view's TTL of `hour` (an older snapshot is neither written nor served), down to the
    microsecond, and every dtype with its extremes and nulls; each row differs in every field from the others."""
    times = [hour - timedelta(hours=5), hour - timedelta(hours=4), hour - timedelta(hours=3, microseconds=-1),
             hour - timedelta(hours=2), hour, hour - timedelta(hours=1, seconds=1)]  # fmt: skip
    rows = pd.DataFrame(
        {
            "thing_id": [1, 2, 3, 4, 5, 6],
            "computed_at": np.array(times, dtype="datetime64[us]"),
            "count": pd.array([BIG, SMALL, 0, None, -1, 2**53 + 1], dtype="Int64"),
            "score": [5e-324, -0.0, 1.7976931348623157e308, np.nan, 0.1, -1 / 3],
            "label": pd.array(["ünïcødé ✓", "", "line\nbreak\ttab", None, "100%s", "x" * 10_000], dtype="str"),
            "active": pd.array([True, False, None, True, False, True], dtype="boolean"),
        }
    )
    return times, rows


HOUR = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
TIMES, ROWS = snapshot_rows(HOUR)


@pytest.fixture(autouse=True)
def now_when_the_test_runs():
    """HOUR, TIMES and ROWS are taken again when each test starts: expiry is measured from the real clock, so rows
    stamped when the module was collected would be hours older in a long or reordered run."""
    global HOUR, TIMES, ROWS
    HOUR = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    TIMES, ROWS = snapshot_rows(HOUR)


def write(store, view: FeatureView, frame: pd.DataFrame) -> None:
    with store.writer(view) as writer:
        writer.write(encode_batch(view, frame))


def test_every_dtype_round_trips_exactly_with_nulls_and_extremes(online_store):
    write(online_store, VIEW, ROWS)
    frame = FeatureReader(online_store, VIEW).get_online_features(ROWS["thing_id"])

    assert frame.dtypes.astype(str).to_dict() == {
        "thing_id": "int64",
        "computed_at": "datetime64[us]",
        "count": "Int64",
        "score": "Float64",
        "label": "string",
        "active": "boolean",
        "_missing": "bool",
    }
    assert not frame["_missing"].any()
    assert frame["computed_at"].tolist() == ROWS["computed_at"].tolist()
    assert frame["count"].tolist() == [BIG, SMALL, 0, pd.NA, -1, 2**53 + 1]
    assert frame["label"].tolist() == ["ünïcødé ✓", "", "line\nbreak\ttab", pd.NA, "100%s", "x" * 10_000]
    assert frame["active"].tolist() == [True, False, pd.NA, True, False, True]
    scores = frame["score"].tolist()
    assert scores[3] is pd.NA
    for got, expected in zip(scores[:3] + scores[4:], [5e-324, -0.0, 1.7976931348623157e308, 0.1, -1 / 3]):
        assert got == expected and math.copysign(1, got) == math.copysign(1, expected)


def test_the_single_entity_path_returns_plain_python_values(online_store):
    write(online_store, VIEW, ROWS)
    reader = FeatureReader(online_store, VIEW)

    assert reader.get_entity(1) == {
        "thing_id": 1,
        "computed_at": TIMES[0],
        "count": BIG,
        "score": 5e-324,
        "label": "ünïcødé ✓",
        "active": True,
        "_missing": False,
    }
    nulls = reader.get_entity(4)
    assert [nulls[name] for name in ("count", "score", "label", "active")] == [None, None, None, True]
    assert math.copysign(1, reader.get_entity(2)["score"]) == -1.0
    assert reader.get_entity(3, features=["label"]) == {
        "thing_id": 3,
        "computed_at": TIMES[2],
        "label": "line\nbreak\ttab",
        "_missing": False,
    }


def test_a_missing_entity_is_flagged_and_never_reads_as_zeros(online_store):
    write(online_store, VIEW, ROWS)
    reader = FeatureReader(online_store, VIEW)

    missing = reader.get_entity(999)
    assert missing["_missing"] is True
    assert all(missing[name] is None for name in ("computed_at", "count", "score", "label", "active"))

    frame = reader.get_online_features([2, 999, 1])
    assert frame["_missing"].tolist() == [False, True, False]
    assert frame.loc[1, ["count", "score", "label", "active"]].isna().all()
    assert pd.isna(frame.loc[1, "computed_at"])
    assert frame["count"].dtype == "Int64" and frame["count"].tolist() == [SMALL, pd.NA, BIG]


def test_an_empty_store_reads_every_entity_as_missing(online_store):
    reader = FeatureReader(online_store, VIEW)
    assert reader.get_entity(1)["_missing"] is True
    assert reader.get_online_features([1, 2])["_missing"].tolist() == [True, True]
    assert len(reader.get_online_features([])) == 0


def test_an_unknown_feature_name_is_a_clear_error(online_store):
    reader = FeatureReader(online_store, VIEW)
    with pytest.raises(RegistryError, match=r"no feature 'colour'.*count, score, label, active"):
        reader.get_entity(1, features=["colour"])
    with pytest.raises(RegistryError, match="no feature 'colour'"):
        reader.get_online_features([1], features=["count", "colour"])


def _corrupt(store, field: str, value: str) -> None:
    """Overwrites one stored value by hand, as someone with a store client could."""
    if store.kind == "redis":
        store.client.hset("features:thing:2", field, value)
    else:
        con = store._connect()
        con.execute(f'update "online_thing_features" set "{field}" = ? where entity_id = ?', (value, "2"))


@pytest.mark.parametrize(
    "field, value", [("count", "12.5"), ("score", "twelve"), ("active", "yes"), ("computed_at", "noon")]
)
def test_a_value_that_cannot_be_cast_raises_an_error_naming_key_field_and_value(online_store, field, value):
    write(online_store, VIEW, ROWS)
    _corrupt(online_store, field, value)
    reader = FeatureReader(online_store, VIEW)
    key = "features:thing:2" if online_store.kind == "redis" else "online_thing_features[thing_id=2]"
    expected = re.escape(key) + f".*{field}.*{re.escape(value)}"

    with pytest.raises(DataError, match=expected):
        reader.get_entity(2)
    with pytest.raises(DataError, match=expected):
        reader.get_online_features([1, 2, 3])
    assert reader.get_entity(1)["count"] == BIG  # other entities stay readable


def test_rewriting_an_entity_replaces_every_field(online_store):
    write(online_store, VIEW, ROWS.iloc[[0]])
    nulls = ROWS.iloc[[3]].assign(thing_id=1)
    write(online_store, VIEW, nulls)

    row = FeatureReader(online_store, VIEW).get_entity(1)
    assert (row["count"], row["score"], row["label"], row["active"]) == (None, None, None, True)
    assert row["computed_at"] == TIMES[3]


def test_a_key_expires_at_its_snapshot_time_plus_the_ttl_not_a_ttl_after_the_write(online_store):
    write(online_store, VIEW, ROWS)
    if online_store.kind == "redis":
        for thing_id, computed_at in zip(ROWS["thing_id"], TIMES):
            expires = online_store.client.execute_command("PEXPIRETIME", f"features:thing:{thing_id}")
            assert expires == int((computed_at + VIEW.online_ttl).replace(tzinfo=UTC).timestamp() * 1000)
    # Read with a TTL that the older snapshots have outlived: they are served as missing, never as stale values.
    short = make_view(ttl=timedelta(hours=3, minutes=30))
    reader = FeatureReader(online_store, short)
    assert reader.get_online_features(ROWS["thing_id"])["_missing"].tolist() == [True, True, False, False, False, False]
    assert reader.get_entity(1)["_missing"] is True and reader.get_entity(1)["count"] is None
    assert reader.get_entity(4)["_missing"] is False


def test_a_snapshot_already_older_than_its_ttl_is_not_written(online_store):
    short = make_view(ttl=timedelta(hours=3, minutes=30))
    write(online_store, short, ROWS)
    assert online_store.count_entities(short) == 4  # things 1 and 2 are 4 and 5 hours old
    assert sorted(online_store.entity_ids(short)) == [b"3", b"4", b"5", b"6"]


def test_the_sync_record_round_trips_and_starts_empty(online_store):
    assert online_store.last_sync(VIEW) is None
    record = SyncRecord(VIEW.version, view_schema(VIEW), DEFINITIONS, HOUR, HOUR + timedelta(minutes=5), 6, True, HOUR)
    online_store.record_sync(VIEW, record)
    assert online_store.last_sync(VIEW) == record


def test_a_reader_refuses_a_store_synced_with_another_schema(online_store):
    old_schema = (("computed_at", "timestamp"), ("count", "string"))
    online_store.record_sync(VIEW, SyncRecord("old", old_schema, (("count", "old"),), None, HOUR, 0, True))
    with pytest.raises(DataError, match=r"schema.*run the sync"):
        FeatureReader(online_store, VIEW)


def test_redis_layout_is_one_readable_hash_per_entity_with_the_ttl(redis_client):
    store = RedisOnlineStore(redis_client)
    write(store, VIEW, ROWS)
    store.record_sync(VIEW, SyncRecord(VIEW.version, view_schema(VIEW), DEFINITIONS, HOUR, HOUR, 6, True))

    assert redis_client.hgetall("features:thing:4") == {
        b"computed_at": TIMES[3].isoformat().encode(),
        b"count": b"\x00",
        b"score": b"\x00",
        b"label": b"\x00",
        b"active": b"true",
    }
    assert redis_client.hgetall("features:thing:1")[b"count"] == b"9223372036854775807"
    assert redis_client.hget("features:thing:2", "score") == b"-0.0"
    meta = {k.decode(): v.decode() for k, v in redis_client.hgetall("featurestore:view:thing_features").items()}
    assert meta["version"] == VIEW.version
    assert (
        meta["schema"]
        == '{"computed_at": "timestamp", "count": "int64", "score": "float64", "label": "string", "active": "bool"}'
    )
    assert meta["last_sync_watermark"] == HOUR.isoformat()
    assert 172_790_000 < redis_client.pttl(b"featurestore:view:thing_features") <= 172_800_000


def test_two_views_of_one_entity_keep_separate_hashes_and_one_exchange_reads_both(redis_client):
    from dataclasses import replace

    first = replace(VIEW, name="thing_features")  # the entity's own view: features:thing:<id>
    second = replace(
        VIEW, name="thing_order_features", features=VIEW.features[:2]
    )  # features:thing_order_features:<id>
    store = RedisOnlineStore(redis_client)
    write(store, first, ROWS)
    other = ROWS.copy()
    other["count"] = other["count"].fillna(0) // 2
    write(store, second, other[["thing_id", "computed_at", "count", "score"]])
    assert redis_client.hget("features:thing:1", "count") == str(BIG).encode()
    assert redis_client.hget("features:thing_order_features:1", "count") == str(BIG // 2).encode()
    assert store.count_entities(first) == store.count_entities(second) == len(ROWS)
    rows = store.read_rows(
        [(first, 1, ["computed_at", "count"]), (second, 1, ["computed_at", "count"]), (second, 99, ["count"])]
    )
    assert [row and row[1] for row in rows] == [str(BIG).encode(), str(BIG // 2).encode(), None]


def test_a_redis_url_of_another_scheme_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as error:
        RedisOnlineStore.from_url("http://user:s3cret@host:6379/0")
    assert "s3cret" not in str(error.value)


def test_a_string_holding_the_null_marker_is_refused():
    bad = ROWS.iloc[[0]].assign(label=pd.array(["a\x00b"], dtype="str"))
    with pytest.raises(DataError, match="NUL byte"):
        encode_batch(VIEW, bad)


def test_sqlite_store_lives_in_the_given_file(tmp_path):
    path = tmp_path / "nested" / "online.sqlite"
    with SqliteOnlineStore(path) as store:
        write(store, VIEW, ROWS)
    assert path.exists()
    with SqliteOnlineStore(path) as reopened:
        assert FeatureReader(reopened, VIEW).get_entity(5)["label"] == "100%s"


def test_a_redis_hash_missing_a_field_is_an_error_not_a_null(redis_client):
    store = RedisOnlineStore(redis_client)
    write(store, VIEW, ROWS)
    redis_client.hdel("features:thing:2", "score")
    reader = FeatureReader(store, VIEW)
    with pytest.raises(DataError, match="features:thing:2 has no field 'score'"):
        reader.get_entity(2)
    with pytest.raises(DataError, match="features:thing:2 has no field 'score'"):
        reader.get_online_features([1, 2])
