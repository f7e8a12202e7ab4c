"""Run conditions in the profile key: thread counts, providers and power modes are kept apart,
old stores and exports still read, and the device fingerprint ignores host name and kernel."""
import json
import os
import sqlite3
import stat

import pytest

from edgesdk.costs import bundle_rows
from edgesdk.errors import ProfileStoreError
from edgesdk.profiles import (STORE_VERSION, ProfileStore, device_description,
                              device_fingerprint, graphs_sha256, read_import)
from edgesdk.runtime import conditions


def row(**kw):
    base = {"device": "dev-a", "target": "host", "bundle_sha256": "b" * 64, "graph": "stage0",
            "build": "onnx", "precision": "fp32", "batch": 1, "resolution": "28x28",
            "conditions": "providers=CPUExecutionProvider;threads=2", "metric": "mean_ms",
            "value": 1.5, "sensor": "none", "sdk_version": "0.1.0",
            "measured_at": "2026-11-22T10:00:00.000000Z"}
    base.update(kw)
    return base


def test_rows_measured_under_other_conditions_are_kept_apart(tmp_path):
    with ProfileStore(str(tmp_path / "p.sqlite")) as s:
        s.write([row()])
        s.write([row(conditions="providers=CPUExecutionProvider;threads=1", value=2.5)])
        s.write([row(value=1.4)])          # the same conditions again: replaces
        got = sorted((r["conditions"], r["value"]) for r in s.rows())
    assert got == [("providers=CPUExecutionProvider;threads=1", 2.5),
                   ("providers=CPUExecutionProvider;threads=2", 1.4)]


V1_MEASUREMENTS = """CREATE TABLE measurements (
    device TEXT NOT NULL, target TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
    graph TEXT NOT NULL, build TEXT NOT NULL, precision TEXT NOT NULL,
    batch INTEGER NOT NULL, resolution TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, sensor TEXT NOT NULL, sdk_version TEXT NOT NULL, measured_at TEXT NOT NULL,
    PRIMARY KEY (device, target, bundle_sha256, graph, build, precision, batch, resolution, metric))"""


def _v1_store(path):
    """A store as edgesdk wrote it before conditions were recorded."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "edgesdk-profiles"),
                                                       ("version", "1")])
    con.execute("CREATE TABLE devices (device TEXT PRIMARY KEY, description TEXT NOT NULL)")
    con.execute(V1_MEASUREMENTS)
    old = row()
    del old["conditions"]
    con.execute("INSERT INTO measurements VALUES ({})".format(", ".join("?" * len(old))),
                list(old.values()))
    con.commit()
    con.close()
    return path


def test_a_version_1_store_is_migrated_and_imported(tmp_path):
    # Imported as untrusted input, read-only: its rows come with conditions not recorded.
    src = _v1_store(str(tmp_path / "old.sqlite"))
    data = read_import(src)
    assert [r.get("conditions", "") for r in data["rows"]] == [""]
    with ProfileStore(str(tmp_path / "new.sqlite")) as s:
        assert s.merge(data) == 1 and s.rows()[0]["conditions"] == ""
    # Opened as the user's own store: migrated in place, rows kept.
    with ProfileStore(src) as s:
        assert [(r["conditions"], r["value"]) for r in s.rows()] == [("", 1.5)]
        s.write([row()])
        assert len(s.rows()) == 2
    con = sqlite3.connect(src)
    assert dict(con.execute("SELECT key, value FROM meta"))["version"] == str(STORE_VERSION)


def test_exports_without_conditions_still_import(tmp_path):
    old = row()
    del old["conditions"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "edgesdk-profiles", "version": 1, "rows": [old]}))
    with ProfileStore(str(tmp_path / "p.sqlite")) as s:
        assert s.merge(read_import(str(path))) == 1 and s.rows()[0]["conditions"] == ""


def _manifest():
    return {"stages": [{"id": "stage0", "file": "s.onnx"}], "exits": [],
            "files": {"s.onnx": {"sha256": "0" * 64}}}


def test_readers_take_one_set_of_conditions_the_latest_unless_told(tmp_path):
    m = _manifest()
    sha = graphs_sha256(m)
    db = str(tmp_path / "p.sqlite")
    with ProfileStore(db) as s:
        s.write([row(bundle_sha256=sha, conditions="threads=1", value=3.0,
                     measured_at="2026-11-22T11:00:00.000000Z"),
                 row(bundle_sha256=sha, conditions="threads=2", value=2.0)])
    rows, device, _ = bundle_rows(db, m)
    assert device == "dev-a" and [r["value"] for r in rows] == [3.0]     # latest measured
    rows, _, _ = bundle_rows(db, m, conditions="threads=2")
    assert [r["value"] for r in rows] == [2.0]
    with pytest.raises(ProfileStoreError, match="under conditions 'threads=4'; it has"):
        bundle_rows(db, m, conditions="threads=4")


def _fake_board(tmp_path, governor="schedutil", low="2035200", high="2035200"):
    cpufreq = tmp_path / "cpufreq"
    cpufreq.mkdir()
    for name, value in (("scaling_governor", governor), ("scaling_min_freq", low),
                        ("cpuinfo_max_freq", high)):
        (cpufreq / name).write_text(value + "\n")
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R32 (release), REVISION: 7.1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvpmodel"
    tool.write_text("#!/bin/sh\necho 'NV Fan Mode:quiet'\necho 'NV Power Mode: MAXN'\necho 0\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return str(cpufreq), str(release), str(bin_dir)


def test_conditions_name_threads_provider_governor_and_the_jetson_power_mode(tmp_path, monkeypatch):
    cpufreq, release, bin_dir = _fake_board(tmp_path)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    got = conditions.current(threads=2, cpufreq=cpufreq, tegra_release=release)
    assert got == {"threads": "2", "providers": "CPUExecutionProvider", "governor": "schedutil",
                   "nvpmodel": "MAXN", "jetson_clocks": "on"}
    text = conditions.describe(got)
    assert text == ("governor=schedutil;jetson_clocks=on;nvpmodel=MAXN;"
                    "providers=CPUExecutionProvider;threads=2")
    assert conditions.parse(text) == got and conditions.parse("") == {}
    # Not a Jetson, no cpufreq: only what the process knows.
    plain = conditions.current(threads=1, cpufreq=str(tmp_path / "none"),
                               tegra_release=str(tmp_path / "none"))
    assert plain == {"threads": "1", "providers": "CPUExecutionProvider"}


def test_the_device_fingerprint_ignores_host_name_and_kernel(monkeypatch):
    import platform
    desc = device_description()
    assert "hostname" not in desc and "release" not in desc
    assert desc["software"]["onnxruntime"] and desc["cpu"]
    before = device_fingerprint()
    monkeypatch.setattr(platform, "node", lambda: "renamed-board")
    monkeypatch.setattr(platform, "release", lambda: "5.10.999-reflashed")
    assert device_fingerprint() == before


def test_profiling_with_another_thread_count_keeps_the_first_rows(bundle_master, tmp_path):
    import subprocess
    import sys
    edgesdk = os.path.join(os.path.dirname(sys.executable), "edgesdk")
    db = str(tmp_path / "p.sqlite")
    for threads in ("1", "2"):   # one process each: a process has one ONNX Runtime pool
        subprocess.run([edgesdk, "profile", bundle_master, "--db", db, "--threads", threads,
                        "--warmup", "1", "--repeats", "3", "--warmup-seconds", "0",
                        "--min-seconds", "0", "--no-sensor"], check=True,
                       stdout=subprocess.DEVNULL)
    with ProfileStore(db) as s:
        seen = {conditions.parse(r["conditions"])["threads"] for r in s.rows(graph="stage0")}
    assert seen == {"1", "2"}


def test_conditions_record_the_threads_sessions_really_use():
    from edgesdk.runtime.executors import ort
    pool = ort._pool["threads"]
    try:
        ort._pool["threads"] = 1
        assert ort.threads_in_use(2) == 1     # a second count in one process: the first pool
        ort._pool["threads"] = -1
        assert ort.threads_in_use(2) == 2     # per-session pools: as asked
    finally:
        ort._pool["threads"] = pool
