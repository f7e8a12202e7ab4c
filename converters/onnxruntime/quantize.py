"""Reduced-precision builds of ONNX stages and heads: INT8 with ONNX Runtime's static
quantization, FP16 with onnxconverter-common.

QDQ format, per-channel signed weights and unsigned activations: the combination that runs
fast on x86 (VNNI) and that TensorRT and QNN read. Activation ranges come from calibration
inputs the caller computes from real data (each graph's own inputs: the state the previous
stage produced), never from random tensors.

Quantization runs in a fresh child process (``python -m``, so a caller's script is never
re-imported as multiprocessing's spawn would): once edgesdk's executors have created ONNX
Runtime's process-wide thread pool, ORT refuses the per-session pools its calibrator asks for
("use_per_session_threads must be false when using a global thread pool").
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from edgesdk.deps import require
from edgesdk.errors import ConversionError, InputError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class _Feeds(object):
    """ONNX Runtime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # called by some ORT versions between passes
        pass


def quantize_graphs(jobs, feed_batch=32):
    """Run :func:`quantize_int8` for each ``(src, dst, inputs, method, symmetric)`` in a child
    process.

    ``inputs``: ``{input name: float32 array}`` of calibration data for that graph, fed in
    batches of ``feed_batch``.
    """
    scratch = tempfile.mkdtemp(prefix="edgesdk-quant-")
    try:
        spec = []
        for i, (src, dst, inputs, method, symmetric) in enumerate(jobs):
            data = os.path.join(scratch, "feeds{}.npz".format(i))
            np.savez(data, **inputs)
            spec.append({"src": src, "dst": dst, "data": data, "method": method,
                         "symmetric": symmetric, "feed_batch": feed_batch})
        with open(os.path.join(scratch, "jobs.json"), "w") as f:
            json.dump(spec, f)
        proc = subprocess.run([sys.executable, "-m", "edgesdk.converters.onnxruntime.quantize",
                               os.path.join(scratch, "jobs.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        error = os.path.join(scratch, "error.json")
        if os.path.exists(error):
            with open(error) as f:
                kind, message = json.load(f)
            raise (InputError if kind == "InputError" else ConversionError)(message)
        if proc.returncode != 0:
            raise ConversionError("the INT8 quantization process failed (exit {}): {}".format(
                proc.returncode, proc.stderr.strip()[-2000:]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_jobs(jobs_file):
    """The child process: quantize each job, reporting an EdgeSDK error as error.json."""
    with open(jobs_file) as f:
        jobs = json.load(f)
    try:
        for job in jobs:
            with np.load(job["data"], allow_pickle=False) as data:
                inputs = {k: data[k] for k in data.files}
            n = len(next(iter(inputs.values())))
            b = job["feed_batch"]
            feeds = [{k: v[i:i + b] for k, v in inputs.items()} for i in range(0, n, b)]
            quantize_int8(job["src"], job["dst"], feeds, job["method"], job["symmetric"])
    except (InputError, ConversionError) as exc:
        with open(os.path.join(os.path.dirname(jobs_file), "error.json"), "w") as f:
            json.dump([type(exc).__name__, str(exc)], f)


def quantize_int8(src, dst, feeds, method="minmax", symmetric=False):
    """Write an INT8 QDQ copy of the ONNX graph ``src`` to ``dst``.

    ``feeds``: a list of ``{input name: float32 array}`` batches of real calibration inputs.
    ``method``: how activation ranges are set from them (minmax, entropy, percentile).
    ``symmetric``: int8 activations with every zero point 0 (TensorRT) instead of uint8.
    """
    q = require("onnxruntime.quantization", "onnx", "quantize stages to INT8")
    if method not in CALIBRATION_METHODS:
        raise InputError("unknown calibration method '{}'; choose one of {}".format(
            method, ", ".join(CALIBRATION_METHODS)))
    if not feeds:
        raise InputError("INT8 quantization needs calibration inputs (real data)")
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    # ORT writes calibration scratch files into the working directory: keep them out of it.
    scratch = tempfile.mkdtemp(prefix="edgesdk-quant-")
    cwd = os.getcwd()
    try:
        os.chdir(scratch)
        # ORT's pre-processing (basic graph optimizations + shape inference) first: the
        # exporter feeds some biases through Identity nodes, which the quantizer leaves float,
        # and ORT then cannot fuse those convolutions into QLinearConv (measured: a
        # ResNet-18-sized stage kept 4 of 5 convolutions in float, INT8 ran 0.84x FP32 speed).
        pre = os.path.join(scratch, "preprocessed.onnx")
        require("onnxruntime.quantization.shape_inference", "onnx",
                "quantize stages to INT8").quant_pre_process(src, pre)
        q.quantize_static(pre, dst, _Feeds(feeds), quant_format=q.QuantFormat.QDQ,
                          per_channel=True,
                          activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, calibrate_method=methods[method],
                          # TensorRT reads int8 Q/DQ only: float biases, zero points 0
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                         "QuantizeBias": False} if symmetric else None)
    except Exception as exc:  # ORT raises plain exceptions for graphs it cannot quantize
        raise ConversionError("ONNX Runtime could not quantize {}: {}: {}".format(
            os.path.basename(src), type(exc).__name__, exc))
    finally:
        os.chdir(cwd)
        shutil.rmtree(scratch, ignore_errors=True)
    drop_unused_domains(dst)


def drop_unused_domains(path):
    """Remove the opset imports of ``path`` that no node uses. ONNX Runtime 1.31's
    pre-processing declares every domain it knows (ai.onnx.ml, com.microsoft, ...), and older
    runtimes on the boards refuse graphs naming a domain version they lack (onnxruntime 1.10,
    JetPack 4.6's Python 3.6: ai.onnx.ml opset 5)."""
    onnx = require("onnx", "onnx", "write INT8 graphs")
    model = onnx.load(path)
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or not o.domain]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, path)


def int8_rule_violations(path, symmetric_int8=False, no_bool=False):
    """What in the INT8 graph at ``path`` breaks a target's rules: with ``symmetric_int8``
    (TensorRT), Q/DQ nodes whose zero point is not int8 or not 0; with ``no_bool``, bool
    tensors. Returns a list of messages naming the nodes (empty: fine)."""
    onnx = require("onnx", "onnx", "check INT8 graphs")
    from onnx import numpy_helper
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    bad = []
    if symmetric_int8:
        for node in g.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zp = consts.get(node.input[2])
                if zp is None:
                    continue
                zp = numpy_helper.to_array(zp)
                if zp.dtype != np.int8:
                    bad.append("{} '{}' is {}, not int8".format(node.op_type, node.name, zp.dtype))
                elif zp.any():
                    bad.append("{} '{}' has a non-zero zero point".format(node.op_type, node.name))
    if no_bool:
        for v in list(g.value_info) + list(g.input) + list(g.output):
            if v.type.tensor_type.elem_type == onnx.TensorProto.BOOL:
                bad.append("tensor '{}' is bool".format(v.name))
    return bad


MAX_FLOAT32_NODES = 32   # nodes kept in float32 before an FP16 conversion is given up


def to_fp16(src, dst):
    """Write an FP16 copy of the ONNX graph ``src`` to ``dst``: weights and compute in half
    precision, float32 inputs and outputs kept (Cast nodes at the edges). Returns the names
    of the nodes kept in float32.

    onnxconverter-common leaves some graphs untyped for ONNX Runtime: a Cast whose ``to`` stays
    float beside a value_info it made float16, a Conv reading a float and a float16 tensor
    (depthwise and attention blocks exported by torch). Each node ONNX Runtime names in such a
    type error is kept in float32 (the converter puts Casts around it) and the graph converted
    again, until it loads."""
    onnx = require("onnx", "onnx", "write FP16 stages")
    float16 = require("onnxconverter_common.float16", "onnx", "convert stages to FP16")
    from edgesdk.runtime.executors.ort import make_session
    name = os.path.basename(src)
    kept = []
    while True:
        try:
            model = float16.convert_float_to_float16(onnx.load(src), keep_io_types=True,
                                                     node_block_list=list(kept))
        except Exception as exc:  # the converter raises plain errors on graphs it cannot handle
            raise ConversionError("could not convert {} to FP16: {}: {}".format(
                name, type(exc).__name__, exc))
        try:
            make_session(model.SerializeToString(), threads=1, optimize=False)
            break
        except Exception as exc:  # onnxruntime's own error types
            message = str(exc)
            node = re.search(r"node \(([^)]*)\)", message)
            if node is None or node.group(1) in kept or len(kept) >= MAX_FLOAT32_NODES:
                raise ConversionError(
                    "the FP16 graph of {} does not load in onnxruntime{}: {}".format(
                        name, " (with {} kept in float32)".format(", ".join(kept)) if kept else "",
                        message.strip().splitlines()[-1][:400]))
            kept.append(node.group(1))
    onnx.save_model(model, dst)
    return kept


if __name__ == "__main__":
    _run_jobs(sys.argv[1])
