"""Reading another profile database to import it: the file is untrusted input.

It is opened read-only and immutable (nothing is written to it: no WAL, no journal, no
``meta`` rows; triggers cannot fire), with ``trusted_schema`` off (functions in views and
triggers do not run) and SQLite's defensive mode where the ``sqlite3`` module offers it.
Only the store's own tables are read, and only when each is a real table with the expected
columns (a VIEW named like one is refused, so a recursive view cannot hang the import). Every
query runs under a time limit, row counts are checked before anything is fetched, and every
value is checked before it sizes an allocation. Python 3.6 compatible.
"""
import json
import os
import shutil
import sqlite3
import tempfile
import time

from urllib.parse import quote

from edgesdk.errors import InputError, ProfileStoreError

MAX_SECONDS = 30.0            # for the whole read
MAX_ROWS = 2000000            # per table
MAX_EXITS = 1024              # exit index bound in exit_scores
MAX_SAMPLES = 10000000        # sample index bound in exit_scores
_PROGRESS_STEPS = 10000       # SQLite virtual-machine steps between time checks


def _expected_columns(schema):
    """``{table: [column, ...]}`` of the store's schema (from its own CREATE statements)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(schema)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return dict((t, [r[1] for r in db.execute("PRAGMA table_info({})".format(t))])
                    for t in tables)
    finally:
        db.close()


def _connect(path, immutable=True):
    uri = "file:{}{}".format(quote(os.path.abspath(path)),
                             "?mode=ro&immutable=1" if immutable else "")
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ProfileStoreError("'{}' cannot be opened as a profile database: {}".format(path, exc))
    try:
        db.execute("PRAGMA trusted_schema=OFF")   # SQLite >= 3.31; older ones ignore it
        defensive = getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", None)   # Python >= 3.12
        if defensive is not None and hasattr(db, "setconfig"):
            db.setconfig(defensive, True)
    except sqlite3.Error:
        pass
    deadline = time.monotonic() + MAX_SECONDS
    db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, _PROGRESS_STEPS)
    return db


def read_database(path, schema, store_format, store_version, added=None):
    """Everything an import takes from the database at ``path``: ``{"rows", "devices",
    "runs", "names", "scores"}``; :class:`ProfileStoreError` for anything else than a store
    of this or an older version with sane contents. ``added``: ``{table: columns}`` that
    later versions added, which an older store's table may lack.

    A store still open elsewhere (or copied while open) keeps recent rows in its ``-wal``
    file, which an immutable open does not read: then the database and its WAL are copied to
    a private directory and the copy is read."""
    wal = path + "-wal"
    if os.path.isfile(wal) and os.path.getsize(wal) > 0:
        private = tempfile.mkdtemp(prefix="edgesdk-import-")   # mode 0700
        try:
            copy = os.path.join(private, "store.sqlite")
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, copy + "-wal")
            return _read_connected(_connect(copy, immutable=False), path, schema, store_format,
                                   store_version, added)
        finally:
            shutil.rmtree(private, ignore_errors=True)
    return _read_connected(_connect(path), path, schema, store_format, store_version, added)


def _read_connected(db, path, schema, store_format, store_version, added=None):
    try:
        return _read(db, path, schema, store_format, store_version, added or {})
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise ProfileStoreError("'{}': reading it took longer than {:g} s; it is not a "
                                    "profile store edgesdk wrote".format(path, MAX_SECONDS))
        raise ProfileStoreError("'{}' cannot be read as a profile database: {}".format(path, exc))
    except sqlite3.DatabaseError as exc:
        raise ProfileStoreError("'{}' cannot be read as a profile database: {}".format(path, exc))
    except UnicodeDecodeError as exc:   # TEXT that is not UTF-8 (found by fuzzing)
        raise ProfileStoreError("'{}' holds text that is not UTF-8 ({}): not a profile store "
                                "edgesdk wrote".format(path, exc.reason))
    finally:
        db.close()


def _read(db, path, schema, store_format, store_version, added):
    expected = _expected_columns(schema)
    kinds = {}
    for kind, name in db.execute("SELECT type, name FROM sqlite_master"):
        kinds.setdefault(name, kind)
    if "meta" not in kinds:
        raise ProfileStoreError("'{}' is not an edgesdk profile store (no meta table)".format(path))
    for table, columns in expected.items():
        if table not in kinds:
            continue  # older stores lack some tables
        if kinds[table] != "table":
            raise ProfileStoreError("'{}': '{}' is a {}, not a table; refused".format(
                path, table, kinds[table]))
        have = [r[1] for r in db.execute("PRAGMA table_info({})".format(table))]
        if have == [c for c in columns if c not in added.get(table, ())]:
            expected[table] = have   # a store from before those columns were added
        elif have != columns:
            raise ProfileStoreError("'{}': table {} has columns {}, an edgesdk store has {}"
                                    .format(path, table, have, columns))
        n = db.execute("SELECT count(*) FROM {}".format(table)).fetchone()[0]
        if n > MAX_ROWS:
            raise ProfileStoreError("'{}': table {} has {} rows, more than the {} an import "
                                    "takes".format(path, table, n, MAX_ROWS))
    meta = {}
    for key, value in db.execute("SELECT key, value FROM meta"):
        if isinstance(key, str) and isinstance(value, str):
            meta[key] = value
    if meta.get("format") != store_format:
        raise ProfileStoreError("'{}' is not an edgesdk profile store (format {!r})".format(
            path, meta.get("format")))
    version = meta.get("version", "")
    if not version.isdigit() or int(version) > store_version:
        raise ProfileStoreError("'{}' has store version {!r}; this edgesdk reads versions up to "
                                "{}: upgrade edgesdk".format(path, version, store_version))
    out = {"rows": [], "devices": {}, "runs": [], "names": {}, "scores": []}
    if "measurements" in kinds:
        cols = expected["measurements"]
        out["rows"] = [dict(zip(cols, r)) for r in db.execute(
            "SELECT {} FROM measurements".format(", ".join(cols)))]
    if "devices" in kinds:
        for device, desc in db.execute("SELECT device, description FROM devices"):
            out["devices"][device] = _json(desc, path, "devices.description", dict)
    if "runs" in kinds:
        cols = expected["runs"]
        for r in db.execute("SELECT {} FROM runs".format(", ".join(cols))):
            run = dict(zip(cols, r))
            run["thresholds"] = _json(run["thresholds"], path, "runs.thresholds", list)
            run["exit_counts"] = _json(run["exit_counts"], path, "runs.exit_counts", list)
            out["runs"].append(_check_run(run, path))
    for key, value in meta.items():
        if key.startswith("bundle:"):
            rec = _json(value, path, "meta." + key, dict, strict=False)
            if rec and isinstance(rec.get("name"), str) and isinstance(rec.get("target"), str):
                out["names"][key[len("bundle:"):]] = {"name": rec["name"], "target": rec["target"]}
    if "exit_scores" in kinds:
        cols = expected["exit_scores"]
        for r in db.execute("SELECT {} FROM exit_scores".format(", ".join(cols))):
            out["scores"].append(_check_score(dict(zip(cols, r)), path))
    return out


def _json(text, path, where, kind, strict=True):
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, kind):
        if not strict:
            return None
        raise ProfileStoreError("'{}': {} is not a JSON {}".format(
            path, where, "object" if kind is dict else "list"))
    return value


def _number(v, path, where, integer=False, optional=False, low=None, high=None):
    if v is None and optional:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or (not integer and v != v) or \
            (low is not None and v < low) or (high is not None and v > high):
        raise ProfileStoreError("'{}': {} = {!r} is not {}".format(
            path, where, v, "an integer in range" if integer else "a number in range"))
    return v


def _check_run(run, path):
    for c in ("device", "bundle_sha256", "dataset_sha256", "sensor", "measured_at"):
        if not isinstance(run[c], str) or not run[c]:
            raise ProfileStoreError("'{}': runs.{} must be text".format(path, c))
    _number(run["batch"], path, "runs.batch", integer=True, low=1, high=1 << 31)
    _number(run["samples"], path, "runs.samples", integer=True, low=0, high=MAX_SAMPLES)
    _number(run["mean_ms"], path, "runs.mean_ms", low=0)
    _number(run["energy_mj"], path, "runs.energy_mj", optional=True, low=0)
    _number(run["accuracy"], path, "runs.accuracy", optional=True, low=0, high=1)
    if len(run["thresholds"]) > MAX_EXITS or len(run["exit_counts"]) > MAX_EXITS:
        raise ProfileStoreError("'{}': a run with more than {} exits".format(path, MAX_EXITS))
    return run


def _check_score(row, path):
    for c in ("bundle_sha256", "dataset_sha256", "policy"):
        if not isinstance(row[c], str) or not row[c]:
            raise ProfileStoreError("'{}': exit_scores.{} must be text".format(path, c))
    _number(row["exit"], path, "exit_scores.exit", integer=True, low=0, high=MAX_EXITS - 1)
    _number(row["sample"], path, "exit_scores.sample", integer=True, low=0, high=MAX_SAMPLES)
    _number(row["score"], path, "exit_scores.score")
    _number(row["correct"], path, "exit_scores.correct", integer=True, low=0, high=1)
    return row


def check_json_version(data, path, store_version):
    """Refuse a JSON export written by a newer store version, as the SQLite path does."""
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > store_version:
        raise InputError("{} has version {!r}; this edgesdk reads profile exports up to version "
                         "{}: upgrade edgesdk".format(path, version, store_version))
