"""Conversion as passes over one in-memory draft: one manifest write, one read, each graph
file loaded once; options as one object."""
import hashlib
import os

import onnx
import onnxruntime
import pytest

from conftest import PREPROCESSING, snapshot
from edgesdk import bundle as bundle_io
from edgesdk.converters import ConvertOptions, convert
from edgesdk.converters.draft import edit_bundle
from edgesdk.errors import ManifestError

KW = dict(stages_attr="blocks", heads_attr="exits", preprocessing=PREPROCESSING, progress=False)


@pytest.fixture
def traffic(monkeypatch):
    """Counts manifest reads and writes and ONNX Runtime sessions while a test runs."""
    counts = {"reads": 0, "writes": 0, "sessions": []}
    read, write, session = bundle_io._read_manifest, bundle_io.write_json_atomic, \
        onnxruntime.InferenceSession

    def counted_read(root):
        counts["reads"] += 1
        return read(root)

    def counted_write(path, obj):
        counts["writes"] += os.path.basename(path) == bundle_io.MANIFEST
        return write(path, obj)

    def counted_session(model, *args, **kwargs):
        counts["sessions"].append(model)
        return session(model, *args, **kwargs)
    monkeypatch.setattr(bundle_io, "_read_manifest", counted_read)
    monkeypatch.setattr(bundle_io, "write_json_atomic", counted_write)
    monkeypatch.setattr(onnxruntime, "InferenceSession", counted_session)
    return counts


def test_int8_conversion_writes_the_manifest_once_and_loads_each_graph_once(
        trained_tiny, mnist_split, tmp_path, traffic):
    _, (x, y) = mnist_split
    out = str(tmp_path / "q.edgebundle")
    convert(trained_tiny, x[:8], out, ConvertOptions(precisions=["int8"],
                                                     calibration_data=(x[:64], y[:64]), **KW))
    assert traffic["writes"] == 1
    assert traffic["reads"] == 1          # the final check of every file against its hash
    m = bundle_io.read_bundle(out).manifest
    files = {b["file"] for e in m["stages"] + m["exits"] for b in e["builds"]}
    assert len(files) == 12               # 6 graphs, FP32 and INT8 each
    # Sessions of the bundle's graph files (executors load their checked bytes): one per
    # file, however many build mixes the agreement checks compared. Quantization makes
    # sessions of its own calibration graphs, which are no bundle file.
    by_hash = {rec["sha256"]: rel for rel, rec in m["files"].items()}
    loaded = [by_hash.get(hashlib.sha256(s).hexdigest()) for s in traffic["sessions"]
              if isinstance(s, bytes)]
    assert sorted(f for f in loaded if f) == sorted(files)


def test_keywords_override_the_options_object_and_unknown_ones_are_refused(
        trained_tiny, mnist_split, tmp_path):
    _, (x, _) = mnist_split
    base = ConvertOptions(threshold=0.9, **KW)
    report = convert(trained_tiny, x[:4], str(tmp_path / "a.edgebundle"), base, threshold=0.8)
    m = bundle_io.read_bundle(report.path).manifest
    assert [e["threshold"] for e in m["exits"]] == [0.8, 0.8, None]
    assert base.threshold == 0.9          # the caller's options are not changed
    with pytest.raises(TypeError, match="treshold"):
        convert(trained_tiny, x[:4], str(tmp_path / "b.edgebundle"), base, treshold=0.8)
    assert not os.path.exists(tmp_path / "b.edgebundle")


def test_a_failing_edit_leaves_the_bundle_as_it_was(bundle):
    before = snapshot(bundle)
    with pytest.raises(ManifestError):
        with edit_bundle(bundle) as draft:
            with open(draft.path("extra.bin"), "wb") as f:
                f.write(b"x" * 10)
            draft.add_files(["extra.bin"])
            draft.manifest["exits"][0]["threshold"] = "high"   # breaks the schema
            draft.model()                                      # validated before it runs
    assert snapshot(bundle) == before


def test_models_of_a_draft_share_graphs_until_a_file_changes(bundle):
    with edit_bundle(bundle) as draft:
        a = draft.model()
        assert draft.model() is a                              # same manifest: same model
        draft.manifest["exits"][0]["threshold"] = 0.7
        b = draft.model()
        assert b is not a and b.thresholds[0] == 0.7
        assert [id(g) for g in b.stages + b.heads] == [id(g) for g in a.stages + a.heads]
        graph = onnx.load(draft.path("heads/exit0.onnx"))
        graph.doc_string = "rewritten"                         # other bytes, same function
        onnx.save(graph, draft.path("heads/exit0.onnx"))
        draft.add_files(["heads/exit0.onnx"])
        c = draft.model()
        assert c.heads[0] is not a.heads[0] and c.heads[1] is a.heads[1]
    assert bundle_io.read_bundle(bundle).manifest["exits"][0]["threshold"] == 0.7


def test_a_toolchain_build_is_one_pass_over_one_draft(bundle, traffic, capsys):
    from edgesdk.cli import main
    assert main(["build", bundle, "--toolchain", "tvm", "--json"]) == 0
    assert traffic["writes"] == 1
    assert traffic["reads"] == 2     # the bundle opened for the draft, then the final check
    m = bundle_io.read_bundle(bundle).manifest
    assert all(b["format"] == "tvm" for e in m["stages"] + m["exits"] for b in e["builds"][1:])
