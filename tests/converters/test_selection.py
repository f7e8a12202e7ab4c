"""INT8 builds beside FP32, profiling every build, and conversion choices from a profile."""
import json

import numpy as np
import pytest

from edgesdk.bundle import read_bundle
from edgesdk.cli import main
from edgesdk.converters import calibrate, convert
from edgesdk.converters.builds import FEED_LIMIT
from edgesdk.errors import InputError
from edgesdk.profiles import ProfileStore, ProfileStoreError, graphs_sha256
from edgesdk.runtime import load_bundle
from edgesdk.runtime.profiler import profile_bundle

from conftest import PREPROCESSING

KW = dict(stages_attr="blocks", heads_attr="exits", preprocessing=PREPROCESSING, progress=False)


@pytest.fixture(scope="module")
def calib(mnist_split):
    _, (x, y) = mnist_split
    return x, y


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, trained_tiny, calib):
    out = tmp_path_factory.mktemp("int8") / "tiny.edgebundle"
    report = convert(trained_tiny, calib[0][:8], str(out), precisions=("fp32", "int8"),
                     calibration_data=calib, **KW)
    return str(out), report


def fill(db, manifest, cost, device="board"):
    """Profile rows for every build: ``cost(graph id, precision)`` ms per call at batch 1."""
    rows = []
    for e in manifest["stages"] + manifest["exits"]:
        for b in e["builds"]:
            rows.append({"device": device, "target": "host", "bundle_sha256": graphs_sha256(manifest),
                         "graph": e["id"], "build": "onnx", "precision": b["precision"], "batch": 1,
                         "resolution": "28x28", "metric": "mean_ms",
                         "value": cost(e["id"], b["precision"]), "sensor": "none",
                         "sdk_version": "0.1.0", "measured_at": "2026-11-22T12:00:00Z"})
    with ProfileStore(db) as s:
        s.write(rows)


def test_int8_builds_are_listed_hashed_and_run(int8_bundle, calib):
    path, report = int8_bundle
    m = read_bundle(path).manifest
    for e in m["stages"] + m["exits"]:
        assert e["file"].endswith(".onnx") and e.get("precision", "fp32") == "fp32"
        fp32, int8 = e["builds"]
        assert int8["precision"] == "int8" and int8["file"] in m["files"]
        assert 0.9 <= int8["top1_agreement"] <= 1.0 and int8["agreement_samples"] == min(len(calib[0]), FEED_LIMIT)
        assert report.builds[e["id"]]["int8"] == int8["top1_agreement"]
    x, y = calib
    fp = load_bundle(path).exit_logits(x)
    q = load_bundle(path, builds="int8").exit_logits(x)
    for a, b in zip(fp, q):
        assert not np.array_equal(a, b)                       # really other kernels
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9     # and close to fp32
    assert (q[-1].argmax(1) == y).mean() >= 0.85


def test_profiler_measures_every_build(int8_bundle):
    path, _ = int8_bundle
    out = profile_bundle(path, [1], warmup=1, repeats=3, progress=False)
    got = {(r["graph"], r["precision"]) for r in out["graphs"] if r["kind"] != "runtime"}
    ids = [e["id"] for e in read_bundle(path).manifest["stages"] + read_bundle(path).manifest["exits"]]
    assert got == {(g, p) for g in ids for p in ("fp32", "int8")}


def test_graph_hash_covers_every_build_not_the_selection(int8_bundle):
    m = read_bundle(int8_bundle[0]).manifest
    h = graphs_sha256(m)
    switched = json.loads(json.dumps(m))
    e = switched["stages"][0]
    e.update(file=e["builds"][1]["file"], precision="int8")
    assert graphs_sha256(switched) == h
    switched["files"][e["builds"][1]["file"]]["sha256"] = "0" * 64
    assert graphs_sha256(switched) != h


def test_profile_picks_the_cheaper_build_per_graph(int8_bundle, trained_tiny, calib, tmp_path):
    path, _ = int8_bundle
    m = read_bundle(path).manifest
    db = str(tmp_path / "p.sqlite")
    # INT8 cheaper for stage1 and stage2 only; heads cost little.
    fill(db, m, lambda g, p: {"stage1": 0.5, "stage2": 0.6}.get(g, 2.0) if p == "int8" else
         (1.0 if g.startswith("stage") else 0.05))
    out = str(tmp_path / "chosen.edgebundle")
    report = convert(trained_tiny, calib[0][:8], out, precisions=("fp32", "int8"),
                     calibration_data=calib, profile=db, min_agreement=0.9, **KW)
    assert report.choices["builds"] == {"stage0": "onnx fp32", "exit0": "onnx fp32",
                                        "stage1": "onnx int8", "exit1": "onnx fp32",
                                        "stage2": "onnx int8", "exit2": "onnx fp32"}
    # The INT8 builds measured slower than FP32 are named, with the ratio.
    slower = report.choices["slower_than_fp32"]
    assert sorted(w.split(" build of ")[1].split()[0] for w in slower) == \
        ["exit0", "exit1", "exit2", "stage0"]
    assert "the onnx int8 build of stage0 measured 2.00x the fp32 build's mean_ms" in \
        " ".join(slower) and set(slower) <= set(report.precision_warnings)
    chosen = load_bundle(out)
    cm = chosen.bundle.manifest
    assert cm["stages"][1]["precision"] == "int8" and cm["stages"][1]["file"].endswith(".int8.onnx")
    record = cm["stages"][1]["build_chosen_from"]
    assert record["costs"] == {"onnx fp32": 1.0, "onnx int8": 0.5}
    assert record["profile"]["db"] == db and record["profile"]["bundle_sha256"] == graphs_sha256(m)
    assert chosen.builds["stage1"]["precision"] == "int8"
    # Same graphs: the profile still applies to the chosen bundle, and its reference check
    # compares against the selected builds' outputs.
    assert graphs_sha256(cm) == graphs_sha256(m)
    assert main(["validate", out, "--check"]) == 0
    import jsonschema
    from edgesdk import manifest as mf
    with open(mf.__file__.replace("manifest.py", "manifest.schema.json")) as f:
        assert list(jsonschema.Draft202012Validator(json.load(f)).iter_errors(cm)) == []


def test_agreement_floor_keeps_fp32(int8_bundle, trained_tiny, calib, tmp_path):
    path, _ = int8_bundle
    m = read_bundle(path).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, lambda g, p: 0.1 if p == "int8" else 1.0)
    worst = min(b["top1_agreement"] for e in m["stages"] + m["exits"] for b in e["builds"][1:])
    assert worst < 1.0, "the tiny model's INT8 builds should disagree somewhere"
    out = str(tmp_path / "strict.edgebundle")
    report = convert(trained_tiny, calib[0][:8], out, precisions=("fp32", "int8"),
                     calibration_data=calib, profile=db, min_agreement=1.0, **KW)
    kept = [g for g, b in report.choices["builds"].items() if b == "onnx fp32"]
    assert kept and report.choices["top1_agreement"] == [1.0, 1.0, 1.0]


def test_expensive_head_is_dropped_and_calibration_keeps_it_off(int8_bundle, trained_tiny, calib,
                                                                 tmp_path):
    path, _ = int8_bundle
    m = read_bundle(path).manifest
    db = str(tmp_path / "p.sqlite")
    # exit1's head costs more than stage2 + exit2 together: it can never pay for itself.
    fill(db, m, lambda g, p: {"exit1": 5.0}.get(g, 1.0 if g.startswith("stage") else 0.05))
    x, y = calib
    out = str(tmp_path / "dropped.edgebundle")
    report = convert(trained_tiny, x[:8], out, calibration_data=x, precisions=("fp32", "int8"),
                     profile=db, **KW)
    assert report.choices["dropped_exits"] == [1]
    ex = read_bundle(out).manifest["exits"][1]
    assert ex["dropped"] is True and ex["threshold"] is None
    assert "can never save more than it costs" in ex["chosen_from"]["reason"]
    result = calibrate(out, x, y, max_cost_fraction=0.6, progress=False)
    assert result.point.thresholds[1] is None and result.point.thresholds[0] is not None
    after = read_bundle(out).manifest["exits"]
    assert after[1]["threshold"] is None and after[1]["dropped"] and after[0]["threshold"] is not None
    # With labels, the threshold search decides, weighing the same measured costs (600
    # samples certify 1 point at 99%, not the default 0.5).
    labelled = convert(trained_tiny, x[:8], str(tmp_path / "l.edgebundle"), calibration_data=(x, y),
                       precisions=("fp32", "int8"), profile=db, exit_accuracy_drop=1.0, **KW)
    assert 1 in labelled.choices["dropped_exits"]
    assert labelled.choices["expected"]["criterion"] == "threshold search on labelled data"


def test_refusals(int8_bundle, bundle_master, trained_tiny, calib, tmp_path):
    path, _ = int8_bundle
    m = read_bundle(path).manifest
    db = str(tmp_path / "p.sqlite")
    fill(db, m, lambda g, p: 1.0, device="tx2")
    fill(db, m, lambda g, p: 1.0, device="rb5")
    args = dict(precisions=("fp32", "int8"), calibration_data=calib, **KW)
    with pytest.raises(InputError, match="several devices"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "a.edgebundle"), profile=db, **args)
    with pytest.raises(ProfileStoreError, match="from device nano"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "a.edgebundle"), profile=db,
                device="nano", **args)
    # A profile of the FP32-only bundle is not a profile of this one.
    other = str(tmp_path / "other.sqlite")
    fill_fp32 = read_bundle(bundle_master).manifest
    with ProfileStore(other) as s:
        s.write([{"device": "tx2", "target": "host", "bundle_sha256": graphs_sha256(fill_fp32),
                  "graph": "stage0", "build": "onnx", "precision": "fp32", "batch": 1,
                  "resolution": "28x28", "metric": "mean_ms", "value": 1.0, "sensor": "none",
                  "sdk_version": "0.1.0", "measured_at": "2026-11-22T12:00:00Z"}])
    with pytest.raises(ProfileStoreError, match="converted again since it was profiled"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "a.edgebundle"), profile=other, **args)
    with pytest.raises(InputError, match="need real calibration data"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "a.edgebundle"), precisions=("int8",), **KW)
    with pytest.raises(InputError, match="runs precisions fp32, fp16, int8; fp64 requested"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "a.edgebundle"), precisions=("fp64",),
                calibration_data=calib, **KW)
    assert not list(tmp_path.glob("*.edgebundle"))
