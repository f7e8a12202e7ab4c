"""MetaSchedule tuning: a database is made, resumed without repeating work, applied at build
time (outputs unchanged, its hash recorded, a copy kept in the bundle)."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgesdk.bundle import read_bundle  # noqa: E402
from edgesdk.converters.tvm.build import build_tvm, resolve_target  # noqa: E402
from edgesdk.converters.tvm.tune import PROGRESS_FILE, database_sha256, tune  # noqa: E402
from edgesdk.runtime.engine import load_bundle  # noqa: E402
from edgesdk.targets import get_target  # noqa: E402


@pytest.mark.slow
def test_tune_resume_and_apply(bundle, tmp_path, mnist_split):
    import onnx
    m = read_bundle(bundle).manifest
    head = m["exits"][1]  # one small graph keeps the test short: a pool and a matmul
    graphs = {head["id"]: onnx.load(os.path.join(bundle, head["file"]))}
    target = resolve_target(get_target("host").processor("cpu"))
    db = str(tmp_path / "db")
    first = tune(graphs, target, db, trials=2, progress=False)
    assert first["tasks"] >= 1 and first["tuned"] == first["tasks"] and first["trials"] >= 2
    state = json.load(open(os.path.join(db, PROGRESS_FILE)))
    # Every workload was searched with the budget and measured at least once (a pool has
    # fewer distinct schedules than a budget may ask for).
    assert all(t["searched"] == 2 and 1 <= t["trials"] <= 2 and t["graphs"] == [head["id"]]
               for t in state["tasks"].values())
    records = open(os.path.join(db, "database_tuning_record.json")).read().splitlines()
    assert records and all(json.loads(r)[1][2]["mcpu"] == target["mcpu"] for r in records)

    again = tune(graphs, target, db, trials=2, progress=False)  # nothing left to do
    assert again["tuned"] == 0 and again["skipped"] == first["tasks"]
    assert again["database_sha256"] == first["database_sha256"]

    more = tune(graphs, target, db, trials=4, progress=False)  # resumes: only what is missing
    assert more["tuned"] == first["tasks"]
    assert all(t["searched"] == 4 for t in json.load(open(os.path.join(db, PROGRESS_FILE)))["tasks"].values())

    builds = build_tvm(bundle, "host", "cpu", database=db, progress=False)
    sha = database_sha256(db)
    assert all(b["tvm"]["tuning_database_sha256"] == sha for b in builds)
    kept = os.path.join(bundle, "tvm", "host-cpu", "tuning")
    assert database_sha256(kept) == sha
    assert "tvm/host-cpu/tuning/database_tuning_record.json" in read_bundle(bundle).manifest["files"]
    _, (x, _) = mnist_split
    ref = load_bundle(bundle).exit_logits(x[:9])
    got = load_bundle(bundle, builds="tvm").exit_logits(x[:9])
    assert max(float(np.abs(a - b).max()) for a, b in zip(ref, got)) < 1e-4
