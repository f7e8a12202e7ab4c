"""The SQLite profile store: round trips, merging, bad databases, crash safety."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edgesdk.bundle import read_bundle
from edgesdk.errors import InputError
from edgesdk.profiles import (COLUMNS, ProfileStore, ProfileStoreError, export_rows, graphs_sha256,
                              merge_into)


def row(**kw):
    base = {"device": "dev-a", "target": "host", "bundle_sha256": "b" * 64, "graph": "stage0",
            "build": "onnx", "precision": "fp32", "batch": 1, "resolution": "28x28",
            "metric": "mean_ms", "value": 1.5, "sensor": "none", "sdk_version": "0.1.0",
            "measured_at": "2026-11-22T10:00:00.000000Z"}
    base.update(kw)
    return base


def test_write_read_replace(tmp_path):
    db = str(tmp_path / "p.sqlite")
    with ProfileStore(db) as s:
        s.write([row(), row(metric="energy_mj", value=None), row(graph="exit0", value=0.1)])
        s.write([row(value=2.0)])                      # re-profiling replaces
        rows = s.rows(graph="stage0")
    assert [(r["metric"], r["value"]) for r in rows] == [("energy_mj", None), ("mean_ms", 2.0)]
    with pytest.raises(InputError, match="unknown profile column"):
        ProfileStore(db).rows(colour="red")


@pytest.mark.parametrize("ext", [".csv", ".json"])
def test_export_import_round_trip(tmp_path, ext):
    a = ProfileStore(str(tmp_path / "a.sqlite"))
    a.add_device("dev-a", {"machine": "aarch64"})
    a.write([row(), row(metric="energy_mj", value=None), row(batch=8, value=9.25)])
    out = str(tmp_path / ("rows" + ext))
    assert export_rows(a, out) == 3
    b = ProfileStore(str(tmp_path / "b.sqlite"))
    assert merge_into(b, out) == 3
    assert b.rows() == a.rows()


def test_merging_boards_keeps_the_newer_measurement(tmp_path):
    tx2 = ProfileStore(str(tmp_path / "tx2.sqlite"))
    tx2.add_device("tx2", {"machine": "aarch64", "cpu": "ARMv8 Processor rev 3 (v8l)"})
    tx2.write([row(device="tx2", value=5.0, measured_at="2026-11-22T12:00:00Z")])
    local = ProfileStore(str(tmp_path / "local.sqlite"))
    local.write([row(), row(device="tx2", value=4.0, measured_at="2026-11-22T13:00:00Z")])
    merge_into(local, tx2.path)
    assert {r["device"]: r["value"] for r in local.rows()} == {"dev-a": 1.5, "tx2": 4.0}
    assert local.devices()["tx2"]["machine"] == "aarch64"


def test_corrupt_foreign_and_newer_databases(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ProfileStoreError, match="cannot be used as a profile database"):
        ProfileStore(str(junk))
    foreign = str(tmp_path / "foreign.sqlite")
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(ProfileStoreError, match="not an edgesdk profile store"):
        ProfileStore(foreign)
    newer = str(tmp_path / "newer.sqlite")
    ProfileStore(newer).db.execute("UPDATE meta SET value='99' WHERE key='version'").connection.commit()
    with pytest.raises(ProfileStoreError, match="newer edgesdk"):
        ProfileStore(newer)
    with pytest.raises(ProfileStoreError, match="does not exist"):
        ProfileStore(str(tmp_path / "missing.sqlite"), create=False)


@pytest.mark.parametrize("bad, message", [
    ({"batch": "eight"}, "row 1: batch 'eight' is not an integer"),
    ({"batch": 0}, "batch must be >= 1"),
    ({"value": "fast"}, "not a number"),
    ({"value": float("inf")}, "finite"),
    ({"graph": ""}, "graph must be a non-empty string"),
])
def test_invalid_rows_write_nothing(tmp_path, bad, message):
    s = ProfileStore(str(tmp_path / "p.sqlite"))
    with pytest.raises(InputError, match=message):
        s.write([row(graph="ok"), row(**bad)])
    assert s.rows() == []


def test_bad_import_files(tmp_path):
    s = ProfileStore(str(tmp_path / "p.sqlite"))
    (tmp_path / "x.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(InputError, match="not an edgesdk profile export"):
        merge_into(s, str(tmp_path / "x.json"))
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="CSV header"):
        merge_into(s, str(tmp_path / "x.csv"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        merge_into(s, str(tmp_path / "broken.json"))


WRITER = """
import sys
from edgesdk.profiles import ProfileStore
s = ProfileStore(sys.argv[1])
base = {c: "x" for c in %r}
i = 0
while True:
    i += 1
    s.write([dict(base, batch=i, value=float(i))])
    print(i, flush=True)
""" % (COLUMNS,)


def test_killed_writer_loses_no_committed_row(tmp_path):
    db = str(tmp_path / "p.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, db], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.time() + 60
    while committed < 200 and time.time() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 200
    s = ProfileStore(db)
    assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    batches = [r["batch"] for r in s.rows()]
    assert len(batches) >= committed and sorted(batches) == list(range(1, len(batches) + 1))


def test_graph_hash_ignores_thresholds_but_not_graphs(bundle):
    from edgesdk.bundle import update_manifest
    before = graphs_sha256(read_bundle(bundle).manifest)
    update_manifest(bundle, lambda m: m["exits"][0].update(threshold=0.5))
    assert graphs_sha256(read_bundle(bundle).manifest) == before

    def swap(m):
        m["files"]["stages/stage1.onnx"]["sha256"] = "0" * 64
    m = read_bundle(bundle).manifest
    swap(m)
    assert graphs_sha256(m) != before


@pytest.mark.parametrize("ext", [".csv", ".json"])
def test_the_robust_statistics_and_the_noisy_flag_round_trip(tmp_path, bundle, ext):
    from edgesdk.profiles import PROFILE_METRICS, noisy_graphs, rows_from_profile
    from edgesdk.runtime.timing import latency_stats
    m = read_bundle(bundle).manifest
    graph = {"graph": "exit0", "build": "onnx", "precision": "fp32", "batch": 1,
             "peak_rss_mb": 80.0, "energy_mj": None}
    graph.update(latency_stats([1.0] * 8 + [100.0, 100.0]))       # p90/p50 = 100: noisy
    quiet = dict(graph, graph="stage0", **latency_stats([1.0] * 10))
    rows = rows_from_profile([graph, quiet], m, "dev-a", "none", "2026-12-02T10:00:00Z")
    a = ProfileStore(str(tmp_path / "a.sqlite"))
    a.write(rows)
    out = str(tmp_path / ("rows" + ext))
    assert export_rows(a, out) == 2 * len(PROFILE_METRICS)
    b = ProfileStore(str(tmp_path / "b.sqlite"))
    merge_into(b, out)
    got = {(r["graph"], r["metric"]): r["value"] for r in b.rows()}
    assert got[("exit0", "trimmed_mean_ms")] == pytest.approx(107.0 / 8)
    assert got[("exit0", "p10_ms")] == 1.0 and got[("exit0", "spread")] == pytest.approx(100.0)
    assert got[("exit0", "noisy")] == 1.0 and got[("stage0", "noisy")] == 0.0
    assert noisy_graphs(b.rows()) == {("exit0", "onnx", "fp32", 1)}
