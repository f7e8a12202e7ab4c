"""Measured cost tables from the profile store and calibration against measured budgets."""
import pytest

from edgesdk.bundle import read_bundle
from edgesdk.converters import calibrate
from edgesdk.converters.cost_model import cost_table
from edgesdk.errors import CalibrationError, InputError
from edgesdk.profiles import ProfileStore, ProfileStoreError, graphs_sha256


def fill(db, manifest, device="board", per_call=None, energy=None, batches=(1, 4)):
    """Rows as the profiler writes them; latency per call = (k + 1) ms x batch for stage k."""
    rows = []
    for kind, entries in (("stage", manifest["stages"]), ("head", manifest["exits"])):
        for k, e in enumerate(entries):
            for b in batches:
                ms = (per_call or {}).get((e["id"], b), ((k + 1.0) if kind == "stage" else 0.1) * b)
                for metric, value in (("mean_ms", ms), ("p99_ms", 2 * ms), ("energy_mj", energy)):
                    rows.append({"device": device, "target": "host",
                                 "bundle_sha256": graphs_sha256(manifest), "graph": e["id"],
                                 "build": "onnx", "precision": "fp32", "batch": b,
                                 "resolution": "28x28", "metric": metric, "value": value,
                                 "sensor": "none" if energy is None else "fake VDD_IN",
                                 "sdk_version": "0.1.0", "measured_at": "2026-11-22T12:00:00Z"})
    with ProfileStore(db) as s:
        s.write(rows)


def test_table_values_and_interpolation(bundle, tmp_path):
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, per_call={("stage0", 4): 2.0})     # stage0: 1 ms/sample at b1, 0.5 at b4
    t = cost_table(db, m)
    assert t.stage == [1.0, 2.0, 3.0] and t.head == pytest.approx([0.1] * 3) and not t.interpolated
    t2 = cost_table(db, m, batch=2)
    assert t2.interpolated and t2.stage[0] == pytest.approx(1.0 + (0.5 - 1.0) / 3)
    assert cost_table(db, m, metric="p99_ms").stage == [2.0, 4.0, 6.0]
    with pytest.raises(InputError, match="batch 8 is outside"):
        cost_table(db, m, batch=8)


def test_refusals_name_the_reason(bundle, tmp_path):
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, device="tx2")
    fill(db, m, device="rb5")
    with pytest.raises(InputError, match=r"several devices \['rb5', 'tx2'\]; choose one with --device"):
        cost_table(db, m)
    with pytest.raises(ProfileStoreError, match="from device nano"):
        cost_table(db, m, device="nano")
    with pytest.raises(ProfileStoreError, match="no power sensor there"):
        cost_table(db, m, metric="energy_mj", device="tx2")
    changed = dict(m, files=dict(m["files"]))
    changed["files"]["stages/stage2.onnx"] = {"sha256": "f" * 64, "bytes": 1}
    with pytest.raises(ProfileStoreError, match="changed or converted again since it was profiled"):
        cost_table(db, changed, device="tx2")


def test_the_runtime_and_the_converters_read_costs_by_one_rule(bundle, tmp_path):
    from edgesdk.profiles import device_fingerprint
    from edgesdk.runtime import load_bundle
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, device="tx2")
    model = load_bundle(bundle)
    # One device in the store: both take it, wherever they run.
    assert cost_table(db, m, metric="p99_ms").device == "tx2"
    costs = model.use_profile(db)
    assert "on tx2" in costs.source and costs.stage_ms == [2.0, 4.0, 6.0]
    # Several: this device when it is among them (for both), else an error (for both).
    here = device_fingerprint()
    fill(db, m, device=here, per_call={("stage0", 1): 7.0})
    assert cost_table(db, m).device == here and cost_table(db, m).graph_stage[0] == 7.0
    assert model.use_profile(db).stage_ms[0] == 14.0   # p99 rows: twice the mean here
    assert model.use_profile(db, device="tx2").stage_ms[0] == 2.0
    other = str(tmp_path / "q.sqlite")
    fill(other, m, device="tx2")
    fill(other, m, device="rb5")
    for read in (lambda: cost_table(other, m), lambda: model.use_profile(other)):
        with pytest.raises(InputError, match="several devices"):
            read()


def test_calibrate_under_a_measured_latency_budget(bundle, mnist_split, tmp_path):
    _, (x, y) = mnist_split
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, energy=0.5)
    full = 1.0 + 2.0 + 3.0 + 0.1
    res = calibrate(bundle, x, y, profile=db, budget_latency_ms=0.6 * full, progress=False)
    assert res.unit == "ms" and res.point.mean_cost <= 0.6 * full + 1e-9
    assert res.full_cost == pytest.approx(full)
    chosen = read_bundle(bundle).manifest["exits"][0]["chosen_from"]
    assert chosen["cost_model"] == "measured mean_ms per stage and head"
    assert chosen["profile"]["device"] == "board" and chosen["profile"]["db"] == db
    assert chosen["expected"]["unit"] == "ms"
    res_e = calibrate(bundle, x, y, profile=db, budget_energy_mj=2.0, progress=False)
    assert res_e.unit == "mJ" and res_e.point.mean_cost <= 2.0
    with pytest.raises(CalibrationError, match=r"cheapest achievable is 1\.1 ms"):
        calibrate(bundle, x, y, profile=db, budget_latency_ms=0.5, progress=False)
    with pytest.raises(InputError, match="need measured costs"):
        calibrate(bundle, x, y, budget_latency_ms=1.0, progress=False)


def _engine_rows(manifest, call, stage, head, final=0.0, metric="mean_ms", batch=1):
    base = {"device": "board", "target": "host", "bundle_sha256": graphs_sha256(manifest),
            "build": "python", "precision": "-", "batch": batch, "resolution": "28x28",
            "metric": metric, "sensor": "none", "sdk_version": "0.1.0",
            "measured_at": "2026-11-22T12:00:00Z"}
    return [dict(base, graph=g, value=v) for g, v in
            (("runtime-call", call), ("runtime", stage), ("runtime-head", head),
             ("runtime-final", final))]


def test_the_table_adds_the_engine_cost_and_names_its_statistic(bundle, tmp_path):
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, batches=(1,))                      # stages 1, 2, 3 ms; heads 0.1 ms
    with ProfileStore(db) as s:
        s.write(_engine_rows(m, 0.04, 0.002, 0.01, 0.005))
        s.write([dict(r, metric="noisy", value=1.0 if r["graph"] == "runtime-head" else 0.0)
                 for r in _engine_rows(m, 0, 0, 0)])
    t = cost_table(db, m)
    # stage 0 carries the once-per-call work; every stage its step; every early head its
    # decision, the final head its softmax
    assert t.stage == pytest.approx([1.042, 2.002, 3.002])
    assert t.head == pytest.approx([0.11, 0.11, 0.105])
    assert t.engine == {"call": 0.04, "stage": 0.002, "head": 0.01, "final": 0.005}
    assert t.noisy == ["runtime-head"]
    rec = t.record()
    assert rec["statistic"] == "mean_ms" and rec["engine"] == t.engine and rec["noisy"] == t.noisy
    assert t.describe().startswith("measured mean_ms per stage and head, plus the engine's own")
    # energy tables never include the engine's rows (it is not measured separately)
    with ProfileStore(db) as s:
        s.write(_engine_rows(m, None, None, None, None, metric="energy_mj"))
    fill(db, m, batches=(1,), energy=0.5)
    e = cost_table(db, m, metric="energy_mj")
    assert e.stage == [0.5] * 3 and set(e.engine.values()) == {0.0}


def test_stores_without_the_engine_split_still_read(bundle, tmp_path):
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, batches=(1,))
    with ProfileStore(db) as s:   # an older profiler's single per-step row
        s.write([r for r in _engine_rows(m, 0.0, 0.05, 0.0) if r["graph"] == "runtime"])
    t = cost_table(db, m)
    assert t.stage == pytest.approx([1.05, 2.05, 3.05]) and t.head == pytest.approx([0.1] * 3)


def test_a_budget_where_an_exit_head_costs_more_than_it_saves(bundle, mnist_split, tmp_path):
    # Early heads (with the engine's work for them) dearer than the stages after them, as on
    # tiny models: all leaving at exit 0 costs 1 + 2 = 3 ms, every exit off 1.2 + 0.1 ms.
    _, (x, y) = mnist_split
    m = read_bundle(bundle).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, batches=(1,), per_call={("stage0", 1): 1.0, ("stage1", 1): 0.1,
                                        ("stage2", 1): 0.1, ("exit0", 1): 2.0,
                                        ("exit1", 1): 2.0, ("exit2", 1): 0.1})
    res = calibrate(bundle, x, y, profile=db, budget_latency_ms=1.5, progress=False)
    assert res.point.thresholds[:2] == [None, None]
    assert res.point.mean_cost == pytest.approx(1.3)
