"""Graphs that keep tensors in other files load only from files the manifest lists and
verifies; anything else is refused by edgesdk itself, whatever ONNX Runtime would do."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesdk import bundle as bundle_io
from edgesdk.cli import main
from edgesdk.errors import IntegrityError
from edgesdk.onnx_scan import external_data_locations
from edgesdk.runtime import load_bundle


def _externalize(graph_path, location):
    """Move the graph's large initializers to ``location`` (relative to the graph)."""
    model = onnx.load(graph_path)
    onnx.save_model(model, graph_path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def _point_at(graph_path, location):
    """Make the graph's external tensors name ``location`` (which onnx itself would refuse to
    write: ``..``, absolute paths)."""
    _externalize(graph_path, "x.weights")
    model = onnx.load(graph_path, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, graph_path)
    os.remove(os.path.join(os.path.dirname(graph_path), "x.weights"))


def _relist(bundle, extra=()):
    """Re-hash the bundle's files (and ``extra``) into its manifest, as a writer would."""
    m = bundle_io.read_bundle(bundle, verify=False).manifest
    m["files"].update(bundle_io.hash_files(bundle, sorted(set(m["files"]) | set(extra))))
    bundle_io.write_manifest(bundle, m)


def test_the_scanner_finds_every_external_tensor_and_nothing_else(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph)
    assert external_data_locations(model.SerializeToString()) == []
    path = str(tmp_path / "g.onnx")
    onnx.save_model(model, path)
    _point_at(path, "../../etc/passwd")
    with open(path, "rb") as f:
        assert external_data_locations(f.read()) == ["../../etc/passwd"]
    with pytest.raises(IntegrityError, match="not a readable ONNX model"):
        external_data_locations(b"\x0a\xff\xff\xff")


def test_listed_external_data_beside_the_graph_loads(bundle):
    ref = load_bundle(bundle).exit_logits(np.zeros((2, 1, 28, 28), np.float32))
    _externalize(os.path.join(bundle, "stages", "stage1.onnx"), "stage1.weights")
    _relist(bundle, ["stages/stage1.weights"])
    got = load_bundle(bundle).exit_logits(np.zeros((2, 1, 28, 28), np.float32))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("location", ["unlisted.weights", "../outside.weights", "/etc/hostname"])
def test_external_data_the_manifest_does_not_list_is_refused(bundle, location):
    graph = os.path.join(bundle, "stages", "stage1.onnx")
    if location == "unlisted.weights":
        _externalize(graph, location)    # written beside the graph, not in the manifest
    else:
        _point_at(graph, location)
    _relist(bundle)
    with pytest.raises(IntegrityError, match="not a file of the bundle listed in its manifest"):
        load_bundle(bundle)


def test_validate_reports_unlisted_files(bundle, capsys):
    with open(os.path.join(bundle, "stages", "notes.txt"), "w") as f:
        f.write("x")
    assert main(["validate", bundle, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unlisted"] == ["stages/notes.txt"]
    assert main(["validate", bundle]) == 0
    assert "warning: 1 entry in the directory the manifest does not list" in capsys.readouterr().out
