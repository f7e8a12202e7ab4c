"""Shared by the atheris harnesses: a small valid bundle built without torch, seed inputs,
and the command line (corpus directories are seeded when empty; nothing is committed).

Imported by a harness inside ``atheris.instrument_imports()`` so edgesdk is instrumented.
"""
import io
import json
import os
import sys
import tarfile
import tempfile

from edgesdk.bundle import hash_files, write_manifest

# Graph "files": read_bundle only hashes them, so any bytes do.
FILES = {"stages/stage0.onnx": b"stage0", "stages/stage1.onnx": b"stage1",
         "heads/exit0.onnx": b"exit0", "heads/exit1.onnx": b"exit1",
         "reference/reference.npz": b"ref"}


def _graph(gid, rel, inputs, outputs, shape):
    return {"id": gid, "file": rel, "format": "onnx", "inputs": inputs, "outputs": outputs,
            "macs": 100, "output_shapes": [shape]}


def manifest(files):
    """A valid two-stage manifest shaped like a converted one (``files``: the hash table)."""
    exits = []
    for k in range(2):
        e = _graph("exit%d" % k, "heads/exit%d.onnx" % k, ["s%d" % k], ["logits"], [None, 10])
        e.update(after_stage=k, policy="max-softmax", threshold=0.9 if k == 0 else None,
                 chosen_from={"method": "uncalibrated"})
        exits.append(e)
    return {
        "schema_version": 1, "sdk_version": "0.1.0", "name": "tiny", "target": "host",
        "built_with": {"edgesdk": "0.1.0"}, "provenance": {"source": "fuzz"},
        "files": files, "num_classes": 10, "class_names": None,
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 1, 28, 28],
                    "preprocessing": {"scale": 1 / 255.0, "mean": [0.1307], "std": [0.3081]}}],
        "stages": [_graph("stage0", "stages/stage0.onnx", ["x"], ["s0"], [None, 4, 14, 14]),
                   _graph("stage1", "stages/stage1.onnx", ["s0"], ["s1"], [None, 8, 7, 7])],
        "exits": exits,
        "reference": {"file": "reference/reference.npz", "atol": 1e-4, "rtol": 1e-3},
        "pruning": [], "quantization": {"selected": "fp32"},
    }


def make_bundle(root):
    """Write a valid, sealed bundle at ``root``; returns its manifest."""
    for rel, data in FILES.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    m = manifest(hash_files(root, sorted(FILES)))
    write_manifest(root, m)
    return m


def tar_of(root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in ["manifest.json"] + sorted(FILES):
            tar.add(os.path.join(root, rel), arcname=rel, recursive=False)
    return buf.getvalue()


def profile_seeds():
    """A valid JSON export and a valid CSV export, as bytes."""
    cols = ("device", "target", "bundle_sha256", "graph", "build", "precision", "batch",
            "resolution", "metric", "value", "sensor", "sdk_version", "measured_at")
    row = {"device": "dev-a", "target": "host", "bundle_sha256": "b" * 64, "graph": "stage0",
           "build": "onnx", "precision": "fp32", "batch": 1, "resolution": "28x28",
           "metric": "mean_ms", "value": 1.5, "sensor": "none", "sdk_version": "0.1.0",
           "measured_at": "2026-11-22T10:00:00.000000Z"}
    js = json.dumps({"format": "edgesdk-profiles", "version": 1,
                     "devices": {"dev-a": {"cpu": "x"}}, "rows": [row, dict(row, value=None)]})
    csv = ",".join(cols) + "\n" + ",".join(str(row[c]) for c in cols) + "\n"
    return [b"J" + js.encode(), b"C" + csv.encode(), b"S" + _store_bytes(row)]


def _store_bytes(row):
    """A small profile database (rows, a device, a run, exit scores) as bytes."""
    from edgesdk.profiles import ProfileStore
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "seed.sqlite")
        with ProfileStore(path) as s:
            s.add_device("dev-a", {"cpu": "x"})
            s.write([row])
            s.write_exit_scores("b" * 64, "d" * 64, "max-softmax", [[0.5, 0.9]], [[1, 0]])
            s.write_run({"device": "dev-a", "bundle_sha256": "b" * 64, "dataset_sha256": "d" * 64,
                         "batch": 1, "thresholds": [0.9, None], "samples": 2,
                         "exit_counts": [1, 1], "mean_ms": 0.5, "energy_mj": None,
                         "accuracy": 0.5, "sensor": "none",
                         "measured_at": "2026-11-22T10:00:00Z"})
        with open(path, "rb") as f:
            return f.read()


def run(test_one_input, seeds):
    """Seed the first corpus directory on the command line if it is empty, then fuzz."""
    import atheris
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        os.makedirs(dirs[0], exist_ok=True)
        if not os.listdir(dirs[0]):
            for i, s in enumerate(seeds):
                with open(os.path.join(dirs[0], "seed-%d" % i), "wb") as f:
                    f.write(s)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def tempdir():
    """A scratch directory, in memory where there is one (SQLite and bundle writes fsync)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="edgesdk-fuzz-", dir=shm)
