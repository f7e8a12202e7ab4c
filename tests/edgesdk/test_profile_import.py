"""Importing another profile database treats it as untrusted: nothing in it runs or is
written, sizes are bounded before they allocate, and a failed merge changes nothing."""
import hashlib
import json
import os
import sqlite3
import time

import pytest

from edgesdk.errors import EdgeSDKError, InputError, ProfileStoreError
from edgesdk.profiles import STORE_FORMAT, ProfileStore, merge_into

from test_profiles import row


def _store(path, rows=(), scores=None):
    with ProfileStore(str(path)) as s:
        s.write(list(rows))
        if scores:
            s.write_exit_scores(*scores)
    return str(path)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _unchanged(path, before):
    return _digest(path) == before and not os.path.exists(path + "-wal") and \
        not os.path.exists(path + "-journal")


def _refused_untouched(tmp_path, src, match):
    """Importing ``src`` fails with ``match`` and leaves its bytes as they were, no WAL."""
    before = _digest(src)
    with ProfileStore(str(tmp_path / "dst.sqlite")) as dst:
        with pytest.raises(ProfileStoreError, match=match):
            merge_into(dst, src)
        assert dst.rows() == []
    assert _unchanged(src, before)


def test_a_trigger_in_the_source_never_runs(tmp_path):
    src = _store(tmp_path / "src.sqlite", [row(device="board")])
    con = sqlite3.connect(src)
    con.execute("DELETE FROM meta WHERE key = 'version'")   # an import used to insert it...
    con.execute("CREATE TRIGGER t AFTER INSERT ON meta BEGIN "
                "DELETE FROM measurements; END")             # ...and so ran this
    con.commit()
    con.close()
    _refused_untouched(tmp_path, src, "store version")
    con = sqlite3.connect(src)
    assert con.execute("SELECT count(*) FROM measurements").fetchone()[0] == 1
    con.close()


def test_a_recursive_view_named_like_a_table_is_refused_at_once(tmp_path):
    src = str(tmp_path / "view.sqlite")
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('format', ?), ('version', '1')", (STORE_FORMAT,))
    con.execute("CREATE VIEW measurements AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                "SELECT x + 1 FROM c) SELECT x FROM c")
    con.commit()
    con.close()
    start = time.monotonic()
    _refused_untouched(tmp_path, src, "'measurements' is a view")
    assert time.monotonic() - start < 5


def test_a_foreign_database_is_refused_and_left_as_it_was(tmp_path):
    src = str(tmp_path / "users.sqlite")
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    _refused_untouched(tmp_path, src, "not an edgesdk profile store")


@pytest.mark.parametrize("column, value, message", [
    ("exit", 4 * 10 ** 12, "exit_scores.exit"),
    ("sample", -1, "exit_scores.sample"),
    ("score", "high", "exit_scores.score"),
])
def test_values_that_would_size_allocations_are_checked_first(tmp_path, column, value, message):
    src = _store(tmp_path / "src.sqlite", [row()], ("b" * 64, "d" * 64, "max-softmax",
                                                    [[0.5, 0.9]], [[1, 0]]))
    con = sqlite3.connect(src)
    con.execute("UPDATE exit_scores SET {} = ? WHERE sample = 0".format(column), (value,))
    con.commit()
    con.close()
    with ProfileStore(str(tmp_path / "dst.sqlite")) as dst:
        with pytest.raises(ProfileStoreError, match=message):
            merge_into(dst, src)
        assert dst.rows() == []                       # nothing merged before the error


def test_bad_json_nulls_and_text_versions_give_edgesdk_errors(tmp_path):
    cases = {
        "json": "UPDATE devices SET description = '{not json'",
        "version": "UPDATE meta SET value = 'one' WHERE key = 'version'",
        "null": "UPDATE measurements SET sensor = NULL",
    }
    for name, sql in cases.items():
        src = _store(tmp_path / (name + ".sqlite"), [row()])
        with ProfileStore(src) as s:
            s.add_device("dev-a", {"cpu": "x"})
        con = sqlite3.connect(src)
        if name == "null":   # the column is NOT NULL: make a table that allows it
            con.executescript("ALTER TABLE measurements RENAME TO m0; CREATE TABLE measurements "
                              "AS SELECT * FROM m0; DROP TABLE m0;")
        con.execute(sql)
        con.commit()
        con.close()
        with ProfileStore(str(tmp_path / (name + "-dst.sqlite"))) as dst:
            with pytest.raises(EdgeSDKError):
                merge_into(dst, src)
            assert dst.rows() == []


def test_a_failed_merge_leaves_nothing_merged(tmp_path):
    good = [row(device="board", graph="g{}".format(k)) for k in range(63)]
    src = _store(tmp_path / "src.sqlite", good)
    con = sqlite3.connect(src)
    con.execute("INSERT INTO measurements SELECT device, target, bundle_sha256, 'bad', build, "
                "precision, 0, resolution, conditions, metric, value, sensor, sdk_version, measured_at "
                "FROM measurements LIMIT 1")              # batch 0: refused by the row check
    con.commit()
    con.close()
    with ProfileStore(str(tmp_path / "dst.sqlite")) as dst:
        dst.write([row()])
        with pytest.raises(InputError, match="batch"):
            merge_into(dst, src)
        assert [r["device"] for r in dst.rows()] == ["dev-a"]


def test_a_json_export_of_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "new.json"
    path.write_text(json.dumps({"format": STORE_FORMAT, "version": 99, "rows": [row()]}))
    with ProfileStore(str(tmp_path / "dst.sqlite")) as dst:
        with pytest.raises(InputError, match="version 99"):
            merge_into(dst, str(path))
        assert dst.rows() == []
