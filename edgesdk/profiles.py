"""The profile store: measured costs in SQLite (stdlib), shared by the device and the host.

One row per (device, target, bundle graphs sha256, graph, build, precision, batch,
resolution, run conditions, metric) with the value (NULL = not measured, e.g. energy without
a sensor), the sensor, the SDK version and the time. Re-measuring replaces a row; merging keeps the newer.
WAL journaling and one transaction per write: a profiler killed mid-run loses nothing that
was committed and leaves a readable database. CSV/JSON export and import. Python 3.6.
"""
import csv
import hashlib
import json
import os
import platform
import sqlite3

import edgesdk
from edgesdk.errors import InputError, ProfileStoreError
from edgesdk.manifest import gated_graphs
from edgesdk.profile_import import check_json_version, read_database

STORE_FORMAT = "edgesdk-profiles"
# Version 2 added ``conditions`` to the key: rows measured with 1 and 2 threads, another
# execution provider or power mode are kept apart. Version-1 stores are migrated on open
# (their rows get conditions "": not recorded) and read as such on import.
STORE_VERSION = 2
KEY = ("device", "target", "bundle_sha256", "graph", "build", "precision", "batch",
       "resolution", "conditions", "metric")
COLUMNS = KEY + ("value", "sensor", "sdk_version", "measured_at")
UNRECORDED = ""   # the conditions of rows measured before they were recorded
_MEASUREMENTS = """
CREATE TABLE IF NOT EXISTS measurements (
    device TEXT NOT NULL, target TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
    graph TEXT NOT NULL, build TEXT NOT NULL, precision TEXT NOT NULL,
    batch INTEGER NOT NULL, resolution TEXT NOT NULL, conditions TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL, sensor TEXT NOT NULL, sdk_version TEXT NOT NULL, measured_at TEXT NOT NULL,
    PRIMARY KEY (device, target, bundle_sha256, graph, build, precision, batch, resolution,
                 conditions, metric)
);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, description TEXT NOT NULL);
""" + _MEASUREMENTS + """
CREATE TABLE IF NOT EXISTS exit_scores (
    bundle_sha256 TEXT NOT NULL, dataset_sha256 TEXT NOT NULL, policy TEXT NOT NULL,
    sample INTEGER NOT NULL, exit INTEGER NOT NULL, score REAL NOT NULL, correct INTEGER NOT NULL,
    PRIMARY KEY (bundle_sha256, dataset_sha256, policy, sample, exit)
);
CREATE TABLE IF NOT EXISTS layer_times (
    device TEXT NOT NULL, bundle_sha256 TEXT NOT NULL, graph TEXT NOT NULL,
    build TEXT NOT NULL, precision TEXT NOT NULL, batch INTEGER NOT NULL,
    conditions TEXT NOT NULL, node TEXT NOT NULL, op TEXT NOT NULL, calls INTEGER NOT NULL,
    mean_ms REAL NOT NULL, share REAL, measured_at TEXT NOT NULL,
    PRIMARY KEY (device, bundle_sha256, graph, build, precision, batch, conditions, node)
);
CREATE TABLE IF NOT EXISTS runs (
    device TEXT NOT NULL, bundle_sha256 TEXT NOT NULL, dataset_sha256 TEXT NOT NULL,
    batch INTEGER NOT NULL, thresholds TEXT NOT NULL, samples INTEGER NOT NULL,
    exit_counts TEXT NOT NULL, mean_ms REAL NOT NULL, energy_mj REAL, accuracy REAL,
    sensor TEXT NOT NULL, measured_at TEXT NOT NULL
);
"""


def graphs_sha256(manifest):
    """Identity of a bundle's graphs (every build of every stage and head): what a profile
    measured.

    Thresholds, dropped exits, which build is selected and other manifest fields may change
    without invalidating profiles; a changed graph file changes this hash.
    """
    h = hashlib.sha256()
    # Stages, then heads: stored profiles are keyed by this hash, so the order stays.
    for entry in manifest["stages"] + manifest["exits"]:
        h.update(entry["id"].encode("utf-8"))
        if entry.get("builds"):
            for rel in sorted(b["file"] for b in entry["builds"]):
                h.update(manifest["files"][rel]["sha256"].encode("ascii"))
        else:
            h.update(manifest["files"][entry["file"]]["sha256"].encode("ascii"))
        for piece in gated_graphs(entry):   # gated pieces are timed too
            h.update(manifest["files"][piece["file"]]["sha256"].encode("ascii"))
    return h.hexdigest()


def dataset_sha256(x, y=None):
    """A hash of a data set's inputs (and labels): which data a calibration or run used."""
    import numpy as np
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _gpu_model():
    """The NVIDIA GPU's name from its driver (/proc/driver/nvidia), or a Jetson's SoC."""
    import glob
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info) as f:
                for line in f:
                    if line.startswith("Model:"):
                        return line.split(":", 1)[1].strip()
        except (IOError, OSError):
            pass
    try:
        with open("/proc/device-tree/model") as f:   # Jetson and other device-tree boards
            return f.read().strip("\0\n ")
    except (IOError, OSError):
        return None


def _software():
    """Versions of what executes the graphs (a new onnxruntime can change every figure):
    Python, numpy and onnxruntime, imported so every process describes a device alike."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def device_description():
    """What identifies this device for its measurements: what changes speed (architecture,
    CPU model, its kernel-selecting features (AVX-512 VNNI, Arm dot product, ...) and cores,
    GPU or SoC, memory, OS, the software that runs graphs). The host name and kernel release
    are left out: a reflashed or renamed board is the same device."""
    from edgesdk.runtime.cpu_features import cpu_model, kernel_features
    from edgesdk.runtime.memory import machine_memory_bytes
    memory = machine_memory_bytes()
    return {"machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "cpu_features": kernel_features(),
            "gpu": _gpu_model(), "memory_gb": round(memory / 2.0 ** 30) if memory else None,
            "system": platform.system(), "software": _software()}


def device_fingerprint(description=None):
    """A short stable id for a device description (16 hex digits)."""
    desc = description or device_description()
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class ProfileStore(object):
    """An open profile database. ``ProfileStore(path)`` creates it if missing."""

    def __init__(self, path, create=True):
        self.path = path
        if not create and not os.path.exists(path):
            raise ProfileStoreError("profile database '{}' does not exist".format(path))
        try:
            self.db = sqlite3.connect(path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise ProfileStoreError(
                    "'{}' is an SQLite database but not an edgesdk profile store (tables: {})".format(
                        path, ", ".join(sorted(tables))))
            with self.db:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (STORE_FORMAT,))
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(STORE_VERSION),))
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            if meta.get("format") == STORE_FORMAT and meta.get("version") == "1":
                self._migrate_from_1()
                meta["version"] = str(STORE_VERSION)
        except sqlite3.DatabaseError as exc:
            raise ProfileStoreError("'{}' cannot be used as a profile database: {}".format(path, exc))
        if meta.get("format") != STORE_FORMAT:
            raise ProfileStoreError("'{}' is not an edgesdk profile store (format {!r})".format(
                path, meta.get("format")))
        if int(meta.get("version", "0")) > STORE_VERSION:
            raise ProfileStoreError("'{}' was written by a newer edgesdk (store version {}); this "
                                    "edgesdk reads up to {}: upgrade edgesdk".format(
                                        path, meta["version"], STORE_VERSION))

    def _migrate_from_1(self):
        """Add ``conditions`` to the measurements' key (rows kept, conditions unrecorded), in
        one transaction: a store is either still version 1 or completely version 2."""
        old = [c for c in COLUMNS if c != "conditions"]
        with self.db:
            self.db.execute("ALTER TABLE measurements RENAME TO measurements_v1")
            self.db.execute(_MEASUREMENTS)
            self.db.execute("INSERT INTO measurements ({}, conditions) SELECT {}, ? FROM "
                            "measurements_v1".format(", ".join(old), ", ".join(old)),
                            (UNRECORDED,))
            self.db.execute("DROP TABLE measurements_v1")
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(STORE_VERSION),))

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def add_device(self, fingerprint, description):
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?)",
                            (fingerprint, json.dumps(description, sort_keys=True)))

    def write(self, rows, keep_newer=False):
        """Insert rows (dicts with :data:`COLUMNS`) in one transaction; all or nothing.

        ``keep_newer``: where a row with the same key exists, keep whichever was measured later
        (merging stores); otherwise the new row replaces it (re-profiling).
        """
        clean = [validate_row(r, i) for i, r in enumerate(rows)]
        with self.db:
            self._insert_rows(clean, keep_newer)
        return len(clean)

    def _insert_rows(self, clean, keep_newer):
        """Insert checked rows inside the caller's transaction."""
        sql = "INSERT OR REPLACE INTO measurements ({}) VALUES ({})".format(
            ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS)))
        for row in clean:
            if keep_newer:
                old = self.db.execute(
                    "SELECT measured_at FROM measurements WHERE {}".format(
                        " AND ".join("{} = ?".format(k) for k in KEY)),
                    [row[k] for k in KEY]).fetchone()
                if old is not None and old[0] >= row["measured_at"]:
                    continue
            self.db.execute(sql, [row[c] for c in COLUMNS])

    def merge(self, data):
        """Import what :func:`read_rows`/:func:`~edgesdk.profile_import.read_database` read
        (``rows``, ``devices``, and from a database ``runs``, ``names``, ``scores``) in one
        transaction: all of it or, on any error, nothing. Duplicate rows keep the newer; runs
        already present are not repeated. Returns the number of measurement rows read."""
        clean = [validate_row(r, i) for i, r in enumerate(data["rows"])]
        with self.db:
            for fingerprint, desc in data["devices"].items():
                self.db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?)",
                                (fingerprint, json.dumps(desc, sort_keys=True)))
            self._insert_rows(clean, keep_newer=True)
            known = {(r["device"], r["bundle_sha256"], r["measured_at"]) for r in self.runs()}
            for run in data.get("runs", ()):
                if (run["device"], run["bundle_sha256"], run["measured_at"]) not in known:
                    self._insert_run(run)
            for bundle, rec in data.get("names", {}).items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (
                    "bundle:" + bundle, json.dumps(rec, sort_keys=True)))
            self.db.executemany(
                "INSERT OR REPLACE INTO exit_scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r["bundle_sha256"], r["dataset_sha256"], r["policy"], r["sample"], r["exit"],
                  r["score"], r["correct"]) for r in data.get("scores", ())])
        return len(clean)

    def rows(self, **where):
        """Rows (dicts) matching ``column=value`` filters, in key order."""
        for k in where:
            if k not in COLUMNS:
                raise InputError("unknown profile column '{}'; columns: {}".format(k, ", ".join(COLUMNS)))
        sql = "SELECT {} FROM measurements".format(", ".join(COLUMNS))
        if where:
            sql += " WHERE " + " AND ".join("{} = ?".format(k) for k in where)
        sql += " ORDER BY " + ", ".join(KEY)
        return [dict(zip(COLUMNS, r)) for r in self.db.execute(sql, list(where.values()))]

    def write_layers(self, device, bundle, conditions, rows, measured_at):
        """Store per-node times (``rows`` from :func:`edgesdk.runtime.profiler.layer_rows`),
        replacing the same graph's, build's and batch's earlier ones, in one transaction."""
        with self.db:
            for key in {(r["graph"], r["build"], r["precision"], r["batch"]) for r in rows}:
                self.db.execute("DELETE FROM layer_times WHERE device = ? AND bundle_sha256 = ? "
                                "AND graph = ? AND build = ? AND precision = ? AND batch = ? AND "
                                "conditions = ?", (device, bundle) + key + (conditions,))
            self.db.executemany(
                "INSERT INTO layer_times VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(device, bundle, r["graph"], r["build"], r["precision"], int(r["batch"]),
                  conditions, r["node"], r["op"], int(r["calls"]), float(r["mean_ms"]),
                  r["share"], measured_at) for r in rows])

    def layers(self, bundle=None):
        """Stored per-node times as dicts, slowest first within each graph."""
        cols = ("device", "bundle_sha256", "graph", "build", "precision", "batch", "conditions",
                "node", "op", "calls", "mean_ms", "share", "measured_at")
        sql = "SELECT {} FROM layer_times".format(", ".join(cols))
        args = ()
        if bundle is not None:
            sql, args = sql + " WHERE bundle_sha256 = ?", (bundle,)
        sql += " ORDER BY device, graph, build, precision, batch, mean_ms DESC"
        return [dict(zip(cols, r)) for r in self.db.execute(sql, args)]

    def write_exit_scores(self, bundle, dataset, policy, scores, correct):
        """Per-sample policy scores and correctness at every exit (lists of 1-D sequences),
        so thresholds can be replayed later without the bundle or the data."""
        data = [(bundle, dataset, policy, i, k, float(s), int(c))
                for k, (ks, kc) in enumerate(zip(scores, correct))
                for i, (s, c) in enumerate(zip(ks, kc))]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO exit_scores VALUES (?, ?, ?, ?, ?, ?, ?)", data)

    def exit_scores(self, bundle):
        """``{(dataset, policy): (scores, correct)}``, each a list per exit of per-sample lists."""
        out = {}
        for d, pol, i, k, s, c in self.db.execute(
                "SELECT dataset_sha256, policy, sample, exit, score, correct FROM exit_scores "
                "WHERE bundle_sha256 = ? ORDER BY dataset_sha256, policy, exit, sample", (bundle,)):
            scores, correct = out.setdefault((d, pol), ([], []))
            while len(scores) <= k:
                scores.append([])
                correct.append([])
            scores[k].append(s)
            correct[k].append(bool(c))
        return out

    def write_run(self, run):
        """One measured end-to-end run (dict with the ``runs`` columns; lists as JSON)."""
        with self.db:
            self._insert_run(run)

    def _insert_run(self, run):
        cols = ("device", "bundle_sha256", "dataset_sha256", "batch", "thresholds", "samples",
                "exit_counts", "mean_ms", "energy_mj", "accuracy", "sensor", "measured_at")
        values = [json.dumps(run[c]) if c in ("thresholds", "exit_counts") else run[c] for c in cols]
        self.db.execute("INSERT INTO runs VALUES ({})".format(", ".join("?" * len(cols))), values)

    def runs(self, bundle=None):
        cur = self.db.execute("SELECT * FROM runs" + (" WHERE bundle_sha256 = ?" if bundle else "")
                              + " ORDER BY measured_at", (bundle,) if bundle else ())
        names = [d[0] for d in cur.description]
        out = []
        for r in cur:
            row = dict(zip(names, r))
            row["thresholds"] = json.loads(row["thresholds"])
            row["exit_counts"] = json.loads(row["exit_counts"])
            out.append(row)
        return out

    def bundles(self):
        """Bundle graph hashes with measurements."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT bundle_sha256 FROM measurements ORDER BY bundle_sha256")]

    def bundles_with_scores(self):
        """Bundle graph hashes with stored per-exit scores."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT bundle_sha256 FROM exit_scores ORDER BY bundle_sha256")]

    def devices(self):
        return {d: json.loads(desc) for d, desc in self.db.execute("SELECT device, description FROM devices")}

    def name_bundle(self, bundle, name, target):
        """Remember a bundle's name and target for reports (``meta`` key ``bundle:<sha256>``)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (
                "bundle:" + bundle, json.dumps({"name": name, "target": target}, sort_keys=True)))

    def bundle_names(self):
        """``{bundle sha256: {"name", "target"}}`` for the bundles whose name was recorded."""
        out = {}
        for key, value in self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'bundle:%'"):
            try:
                rec = json.loads(value)
            except ValueError:
                continue  # a foreign or damaged entry names nothing; the hash still identifies
            if isinstance(rec, dict) and _is_text(rec.get("name")) and _is_text(rec.get("target")):
                out[key[len("bundle:"):]] = {"name": rec["name"], "target": rec["target"]}
        return out


MAX_BATCH = 1 << 31


def _is_text(v):
    """A non-empty string SQLite can store (JSON's "\\ud800" escapes give lone surrogates)."""
    if not isinstance(v, str) or not v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_row(row, index=0):
    """A measurement row with every column of the right type; InputError names the row."""
    if not isinstance(row, dict):
        raise InputError("profile row {}: expected an object, got {}".format(index, type(row).__name__))
    missing = [c for c in COLUMNS if c not in row and c != "conditions"]
    if missing:
        raise InputError("profile row {}: missing column(s) {}".format(index, ", ".join(missing)))
    out = {}
    for c in COLUMNS:
        v = row.get(c, UNRECORDED)   # exports written before conditions were recorded
        if c == "conditions":
            if v != UNRECORDED and not _is_text(v):
                raise InputError("profile row {}: conditions must be a string".format(index))
        elif c == "batch":
            try:
                v = int(v)
            except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
                raise InputError("profile row {}: batch {!r} is not an integer".format(index, v))
            if not 1 <= v <= MAX_BATCH:  # SQLite integers have 64 bits
                raise InputError("profile row {}: batch must be >= 1 and <= {}".format(index, MAX_BATCH))
        elif c == "value":
            if v in (None, ""):
                v = None
            else:
                try:
                    v = float(v)
                except (TypeError, ValueError, OverflowError):  # OverflowError: 10**400
                    raise InputError("profile row {}: value {!r} is not a number".format(index, v))
                if v != v or v in (float("inf"), float("-inf")):
                    raise InputError("profile row {}: value must be finite".format(index))
        elif not _is_text(v):
            raise InputError("profile row {}: {} must be a non-empty string".format(index, c))
        out[c] = v
    return out


def export_rows(store, path):
    """Write every row to ``path`` (.csv or .json); returns the row count."""
    from edgesdk.atomic import atomic_file  # temporary file, fsync, rename: never half a file
    rows = store.rows()
    if path.endswith(".json"):
        with atomic_file(path) as f:
            json.dump({"format": STORE_FORMAT, "version": STORE_VERSION, "devices": store.devices(),
                       "rows": rows}, f, indent=1)
    elif path.endswith(".csv"):
        with atomic_file(path, newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow(dict(r, value="" if r["value"] is None else repr(r["value"])))
    else:
        raise InputError("export to .csv or .json, not '{}'".format(path))
    return len(rows)


def read_rows(path):
    """``(rows, devices)`` from a .csv, .json or another profile database (.sqlite/.db)."""
    data = read_import(path)
    return data["rows"], data["devices"]


def read_import(path):
    """What an import takes from ``path`` (see :meth:`ProfileStore.merge`): a .csv or .json
    export, or another profile database read as untrusted (:mod:`edgesdk.profile_import`)."""
    if not os.path.isfile(path):
        raise InputError("'{}' does not exist".format(path))
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise InputError("{} is not valid JSON: {}".format(path, exc))
        except RecursionError:
            raise InputError("{} is not a profile export: JSON nested too deeply".format(path))
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT or not isinstance(
                data.get("rows"), list):
            raise InputError("{} is not an edgesdk profile export (format/rows missing)".format(path))
        check_json_version(data, path, STORE_VERSION)
        devices = data.get("devices") or {}
        if not isinstance(devices, dict) or not all(_is_text(d) for d in devices):
            raise InputError("{}: devices must be an object keyed by device fingerprint".format(path))
        return {"rows": data["rows"], "devices": devices}
    if path.endswith(".csv"):
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or \
                        set(COLUMNS) - set(reader.fieldnames) - {"conditions"}:
                    raise InputError("{}: CSV header must have the columns {}".format(
                        path, ", ".join(COLUMNS)))
                return {"rows": list(reader), "devices": {}}
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError("{} is not a readable CSV export: {}".format(path, exc))
    return read_database(path, _SCHEMA, STORE_FORMAT, STORE_VERSION,
                         added={"measurements": ("conditions",)})


def merge_into(store, path):
    """Import rows from a file or another database in one transaction, keeping the newer of
    duplicates; from another database its end-to-end runs, bundle names and per-exit scores
    come along too. Returns the number of measurement rows read."""
    return store.merge(read_import(path))


# The metrics stored per profiled graph: latency statistics (ms), ``spread`` (p90 / p50) and
# ``noisy`` (1.0 where the spread exceeds 1.5: profile again on a quieter machine), memory and
# energy. Stores written before some of these existed hold fewer metrics; readers ask by name.
# The latency statistic the cost model sums along the runtime's path (the one that predicted
# the measured mean latency of real early-exit runs best: benchmarks/profiler.py, README).
COST_STATISTIC = "mean_ms"
NOISY_SPREAD = 1.5  # p90 / p50 above this flags a row as noisy
PROFILE_METRICS = ("mean_ms", "std_ms", "trimmed_mean_ms", "p10_ms", "p50_ms", "p90_ms",
                   "p99_ms", "min_ms", "max_ms", "spread", "noisy", "peak_rss_mb", "energy_mj")


def noisy_graphs(rows):
    """``{(graph, build, precision, batch)}`` of the rows flagged ``noisy`` (spread > 1.5)."""
    return {(r["graph"], r["build"], r["precision"], r["batch"]) for r in rows
            if r["metric"] == "noisy" and r["value"]}


def rows_from_profile(graph_rows, manifest, device, sensor_name, measured_at, resolution=None,
                      conditions=UNRECORDED):
    """Store rows for the profiler's per-graph results (one per metric of
    :data:`PROFILE_METRICS`; ``noisy`` stored as 1.0 / 0.0) measured under ``conditions``
    (:func:`edgesdk.runtime.conditions.describe`)."""
    res = resolution or "x".join(str(d) for d in manifest["inputs"][0]["shape"][2:]) or "-"
    out = []
    for g in graph_rows:
        for metric in PROFILE_METRICS:
            value = g.get(metric)
            if isinstance(value, bool):
                value = float(value)
            out.append({"device": device, "target": manifest["target"],
                        "bundle_sha256": graphs_sha256(manifest), "graph": g["graph"],
                        "build": g["build"], "precision": g["precision"], "batch": g["batch"],
                        "resolution": res, "conditions": conditions, "metric": metric,
                        "value": value,
                        "sensor": sensor_name, "sdk_version": edgesdk.__version__,
                        "measured_at": measured_at})
    return out


class ProfileRecorder(object):
    """Stores the profiler's per-graph rows for one bundle on this device as they arrive,
    each graph in its own transaction (a killed profiler keeps every finished graph)."""

    def __init__(self, db, manifest, sensor_name="none", conditions=UNRECORDED):
        import datetime
        self._now = lambda: datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.store = ProfileStore(db)
        self.manifest = manifest
        self.sensor_name = sensor_name
        self.conditions = conditions
        desc = device_description()
        self.device = device_fingerprint(desc)
        self.store.add_device(self.device, desc)
        self.store.name_bundle(graphs_sha256(manifest), manifest["name"], manifest["target"])

    def __call__(self, graph_row):
        self.store.write(rows_from_profile([graph_row], self.manifest, self.device,
                                           self.sensor_name, self._now(),
                                           conditions=self.conditions))

    def layers(self, rows):
        """Store per-node times measured under this recorder's conditions."""
        self.store.write_layers(self.device, graphs_sha256(self.manifest), self.conditions,
                                rows, self._now())

    def end_to_end(self, model, x, y, e2e):
        """Store a labelled end-to-end run: every sample's score and correctness at every exit
        (for threshold sweeps in reports) and the measured run (for predicted vs measured)."""
        import numpy as np
        bundle = graphs_sha256(self.manifest)
        dataset = dataset_sha256(x, y)
        policy = model.policies[0]
        probs = model.exit_probabilities(x)
        self.store.write_exit_scores(bundle, dataset, policy.name, [policy.score(p) for p in probs],
                                     [p.argmax(axis=1) == np.asarray(y) for p in probs])
        self.store.write_run({
            "device": self.device, "bundle_sha256": bundle, "dataset_sha256": dataset,
            "batch": e2e["batch_size"], "thresholds": e2e["thresholds"], "samples": e2e["samples"],
            "exit_counts": e2e["exit_counts"], "mean_ms": e2e["mean_ms_per_sample"],
            "energy_mj": e2e["energy_mj_per_sample"], "accuracy": e2e["accuracy"],
            "sensor": self.sensor_name, "measured_at": self._now()})

    def close(self):
        self.store.close()
