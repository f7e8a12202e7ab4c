"""What loading the checked bytes costs: load time of the sample bundle and of a ~200 MB graph.

Side by side, interleaved rounds:
- "by path" (before verified loading): every file hashed by path, then ONNX Runtime opens the
  paths itself;
- "checked twice" (the first verified loading): every file hashed by path when the bundle is
  opened, then each graph read once more, hashed again and handed to ONNX Runtime as bytes
  (what closes the window between check and load);
- "checked once" (now): opening checks each graph's size only; each graph is read once,
  hashed, its activation memory counted (:mod:`edgesdk.runtime.activation_memory`) and
  handed to ONNX Runtime as bytes.
The 200 MB graph is one MatMul with a 7168 x 7168 float32 weight (random: timing only).
Prints a table and, last, one JSON object.
"""
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from common import cpu, print_cpu, sample_parser


def _by_path(paths, threads):
    from edgesdk.runtime.executors.ort import make_session
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        make_session(p, threads)


def _checked_bytes(paths, threads):
    from edgesdk.runtime.executors.ort import make_session
    from edgesdk.verified import VerifiedFile
    records = {}
    for p in paths:   # the check when the bundle is opened
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        records[p] = {"sha256": h.hexdigest(), "bytes": os.path.getsize(p)}
    for p in paths:   # and the load from the bytes checked again
        make_session(VerifiedFile(p, records[p]).data(), threads)


def _checked_once(paths, records, threads):
    from edgesdk.runtime.activation_memory import graph_activation_bytes
    from edgesdk.runtime.executors.ort import make_session
    from edgesdk.verified import VerifiedFile
    for p in paths:   # the size check when the bundle is opened
        assert os.stat(p).st_size == records[p]["bytes"]
    for p in paths:   # the load: read once, hashed, counted
        data = VerifiedFile(p, records[p]).data()
        graph_activation_bytes(data)
        make_session(data, threads)


def _records(paths):
    """What a manifest lists for ``paths`` (computed before timing)."""
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        out[p] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return out


def _big_graph(path, n=7168):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)


def _time(fn, rounds):
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main():
    parser = sample_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print_cpu()
    from run import prepare
    from edgesdk.bundle import read_bundle
    bundle = read_bundle(prepare(args.workdir, epochs=args.epochs, threads=args.threads)[2])
    m = bundle.manifest
    sample = [bundle.path(e["file"]) for e in m["stages"] + m["exits"]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.onnx")
        _big_graph(big)
        cases = {"sample bundle (8 graphs)": sample, "one graph of {:.0f} MB".format(
            os.path.getsize(big) / 1e6): [big]}
        for name, paths in cases.items():
            records = _records(paths)
            a, b, c = [], [], []
            for _ in range(args.rounds):   # interleaved: the machine's load hits all alike
                a += _time(lambda: _by_path(paths, args.threads), 1)
                b += _time(lambda: _checked_bytes(paths, args.threads), 1)
                c += _time(lambda: _checked_once(paths, records, args.threads), 1)
            results[name] = {"by_path_ms": 1000 * statistics.median(a),
                             "checked_twice_ms": 1000 * statistics.median(b),
                             "checked_once_ms": 1000 * statistics.median(c),
                             "ratio_twice": statistics.median(b) / statistics.median(a),
                             "ratio_once": statistics.median(c) / statistics.median(a)}
    print("{:<28} {:>11} {:>14} {:>13} {:>7} {:>7}".format(
        "load", "by path ms", "twice ms", "once ms", "twice", "once"))
    for name, r in results.items():
        print("{:<28} {:>11.1f} {:>14.1f} {:>13.1f} {:>7.2f} {:>7.2f}".format(
            name, r["by_path_ms"], r["checked_twice_ms"], r["checked_once_ms"],
            r["ratio_twice"], r["ratio_once"]))
    print(json.dumps({"results": results, "rounds": args.rounds, "threads": args.threads,
                      **cpu()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
