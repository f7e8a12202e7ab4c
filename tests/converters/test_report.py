"""`edgesdk report`: pages and plots from a profile database alone."""
import json
import os

import numpy as np
import pytest

from edgesdk.cli import main
from edgesdk.converters.report import pareto, write_report
from edgesdk.profiles import ProfileStore, ProfileStoreError
from edgesdk.runtime import load_bundle


def test_pareto_front():
    pts = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.95), (0.5, 0.80), (2.5, 0.97)]
    assert [pts[i] for i in pareto(pts)] == [(0.5, 0.80), (1.0, 0.90), (2.0, 0.95), (2.5, 0.97)]


def test_report_from_a_profiled_run(bundle_master, mnist_split, tmp_path, capsys):
    _, (x, y) = mnist_split
    data = str(tmp_path / "cal.npz")
    np.savez(data, x=x[:200], y=y[:200])
    db = str(tmp_path / "p.sqlite")
    assert main(["profile", bundle_master, "--repeats", "3", "--warmup", "1", "--data", data,
                 "--db", db, "--json"]) == 0
    capsys.readouterr()
    out = str(tmp_path / "report")
    assert main(["report", db, "-o", out]) == 0
    assert "wrote " in capsys.readouterr().out
    md = open(os.path.join(out, "report.md")).read()
    for graph in ("stage0", "stage2", "exit0", "exit2"):
        assert "| {} |".format(graph) in md
    assert "Energy: no sensor on this device" in md and "Pareto front (latency):" in md
    assert "| 1 |" in md and "predicted ms" in md            # predicted vs measured table
    # The bundle and the device in words, not only hashes.
    assert "## tiny (target host) on " in md and "{} cores".format(os.cpu_count()) in md
    assert "Early exits off:" in md and "Thresholds of the profiled run (calibrated):" in md
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert len(pngs) == 4 and all(os.path.getsize(os.path.join(out, p)) > 5000 for p in pngs)
    page = open(os.path.join(out, "report.html")).read()
    assert page.count("<img") == 4 and "<table>" in page and "<h2>" in page

    assert main(["report", db, "-o", out, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert sorted(res["plots"]) == pngs and res["markdown"].endswith("report.md")
    (section,) = res["sections"]
    assert section["bundle"] == {"name": "tiny", "target": "host"}
    assert len(section["stage_ms"]) == 3 and all(v > 0 for v in section["stage_ms"])
    (trade,) = section["tradeoffs"]
    assert set(trade["marked"]) == {"early exits off", "thresholds of the profiled run (calibrated)"}
    # The bundle is uncalibrated (every early exit off): both marks are the same point, the
    # full model's cost and accuracy.
    off = trade["marked"]["early exits off"]
    assert trade["marked"]["thresholds of the profiled run (calibrated)"] == off
    assert off[1] == pytest.approx(float((load_bundle(bundle_master).run(x[:200]).labels
                                          == y[:200]).mean()))


def test_noisy_rows_are_flagged(tmp_path):
    """A graph whose p90 is far above its p50 is marked in the table and the summary."""
    from edgesdk.profiles import ProfileStore
    db = str(tmp_path / "noisy.sqlite")
    rows = []
    for gid, p50, p90 in (("stage0", 1.0, 1.2), ("exit0", 0.1, 0.5)):
        for metric, value in (("mean_ms", p90), ("p50_ms", p50), ("p90_ms", p90)):
            rows.append({"device": "d0", "target": "host", "bundle_sha256": "b" * 64,
                         "graph": gid, "build": "onnx", "precision": "fp32", "batch": 1,
                         "resolution": "28x28", "metric": metric, "value": value,
                         "sensor": "none", "sdk_version": "0", "measured_at": "2026-01-01T00:00:00Z"})
    with ProfileStore(db) as store:
        store.write(rows)
    res = write_report(db, str(tmp_path / "r"))
    assert res["sections"][0]["noisy"] == ["exit0"]
    md = open(res["markdown"]).read()
    assert "| exit0 | 0.5000 | 5.00 (noisy) |" in md and "| stage0 | 1.2000 | 1.20 |" in md
    assert "## bundle bbbbbbbbbbbb on (not described)" in md


def test_empty_database_is_refused(tmp_path):
    db = str(tmp_path / "empty.sqlite")
    ProfileStore(db).close()
    with pytest.raises(ProfileStoreError, match="holds no measurements"):
        write_report(db, str(tmp_path / "r"))
