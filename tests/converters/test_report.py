"""`edgesdk report`: pages and plots from a profile database alone."""
import os

import numpy as np
import pytest

from edgesdk.cli import main
from edgesdk.converters.report import pareto, write_report
from edgesdk.profiles import ProfileStore, ProfileStoreError


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
    md = open(os.path.join(out, "report.md")).read()
    for graph in ("stage0", "stage2", "exit0", "exit2"):
        assert "| {} |".format(graph) in md
    assert "Energy: no sensor on this device" in md and "Pareto front (latency):" in md
    assert "| 1 |" in md and "predicted ms" in md            # predicted vs measured table
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert len(pngs) == 4 and all(os.path.getsize(os.path.join(out, p)) > 5000 for p in pngs)
    page = open(os.path.join(out, "report.html")).read()
    assert page.count("<img") == 4 and "<table>" in page and "<h2>" in page


def test_empty_database_is_refused(tmp_path):
    db = str(tmp_path / "empty.sqlite")
    ProfileStore(db).close()
    with pytest.raises(ProfileStoreError, match="holds no measurements"):
        write_report(db, str(tmp_path / "r"))
