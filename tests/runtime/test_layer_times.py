"""Per-layer timing (`edgesdk profile --per-layer`): ONNX Runtime's own session profile per
node, stored in the profile store and printed slowest first, as trtexec --dumpProfile."""
import json

import pytest

from conftest import cli
from edgesdk.profiles import ProfileStore, graphs_sha256
from edgesdk.runtime import load_bundle
from edgesdk.runtime.profiler import layer_rows, profile_bundle


def test_every_node_of_every_graph_is_timed_by_onnxruntime(bundle_master):
    model = load_bundle(bundle_master)
    rows = layer_rows(model, 4, calls=5)
    m = model.bundle.manifest
    assert sorted({r["graph"] for r in rows}) == sorted(e["id"] for e in m["stages"] + m["exits"])
    assert {"Conv", "Gemm"} <= {r["op"] for r in rows}
    for gid in {r["graph"] for r in rows}:
        mine = [r for r in rows if r["graph"] == gid]
        assert sum(r["share"] for r in mine) == pytest.approx(1.0)
        assert [r["mean_ms"] for r in mine] == sorted((r["mean_ms"] for r in mine), reverse=True)
        assert all(r["calls"] == 5 and r["batch"] == 4 and r["mean_ms"] >= 0 for r in mine)


def test_profile_per_layer_stores_and_prints_the_slowest_nodes(bundle_master, tmp_path, capsys):
    db = str(tmp_path / "p.sqlite")
    code, out, err = cli(capsys, "profile", bundle_master, "--repeats", "5", "--min-seconds",
                         "0", "--warmup", "1", "--warmup-seconds", "0", "--per-layer", "--top",
                         "2", "--db", db)
    assert code == 0, err
    assert "stage0 (onnx fp32, batch 1):" in out and "slowest 2:" in out
    assert "samples/s" in out and "max" in out
    with ProfileStore(db) as s:
        stored = s.layers(graphs_sha256(load_bundle(bundle_master).bundle.manifest))
    assert {r["graph"] for r in stored} >= {"stage0", "exit2"}
    assert all(r["build"] == "onnx" and r["calls"] > 0 for r in stored)
    # Profiling again replaces the graph's nodes instead of adding to them.
    profile_bundle(bundle_master, [1], warmup=1, repeats=3, min_seconds=0, warmup_s=0,
                   db=db, per_layer=True, progress=False)
    with ProfileStore(db) as s:
        again = s.layers()
    assert len(again) == len(stored)


def test_per_layer_json_has_every_node(bundle_master, capsys):
    code, out, _ = cli(capsys, "profile", bundle_master, "--repeats", "3", "--min-seconds", "0",
                       "--warmup", "1", "--warmup-seconds", "0", "--per-layer", "--json")
    assert code == 0
    layers = json.loads(out)["layers"]
    assert layers and {"graph", "node", "op", "mean_ms", "share"} <= set(layers[0])
