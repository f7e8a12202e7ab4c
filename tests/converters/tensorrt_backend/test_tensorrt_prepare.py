"""TensorRT-ready bundles: operator and opset checks against the release tables, decompositions
checked with ONNX Runtime, calibration cache bytes, trtexec lines, profiles, manifest records
and the errors for what TensorRT would refuse."""
import json
import logging
import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesdk.bundle import read_bundle
from edgesdk.converters.tensorrt.calib import activation_scales, cache_text, scale_hex
from edgesdk.converters.tensorrt.check import check_graphs, decompose, graph_problems
from edgesdk.converters.tensorrt.prepare import (
    graph_profile, parse_batch_profile, parse_shape_profile, prepare_tensorrt, trtexec_line)
from edgesdk.errors import ConversionError, InputError, UnsupportedOpError
from edgesdk.runtime.executors.ort import make_session
from edgesdk.converters.tensorrt.ops import TENSORRT_8_2, TENSORRT_10, tensorrt_ops


def _model(nodes, inputs, outputs, opset=13, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run(model, feeds):
    return make_session(model.SerializeToString()).run(None, feeds)


# -- calibration cache -----------------------------------------------------------------------

def test_calibration_cache_is_tensorrt_text_format_byte_for_byte():
    text = cache_text([("x", 1.0), ("conv_out", 0.5), ("/0/Relu_output_0", 1.0 / 127)], "8201")
    assert text.encode() == (b"TRT-8201-EntropyCalibration2\n"
                             b"x: 3f800000\n"
                             b"conv_out: 3f000000\n"
                             b"/0/Relu_output_0: 3c010204\n")
    assert scale_hex(2.0 ** -20) == "35800000"


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_calibration_cache_refuses_scales_that_are_not_positive(bad):
    with pytest.raises(ConversionError, match="positive"):
        scale_hex(bad)


# -- the release tables ----------------------------------------------------------------------

def test_every_unsupported_node_of_every_graph_is_reported_at_once_with_fixes():
    x = _float("x", [None, 4])
    a = _model([helper.make_node("Reciprocal", ["x"], ["r"], name="recip"),
                helper.make_node("NonZero", ["r"], ["y"], name="nz")], [x],
               [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    b = _model([helper.make_node("Mod", ["x", "x"], ["y"], name="mod", fmod=1)], [x],
               [_float("y", [None, 4])], opset=17)
    with pytest.raises(UnsupportedOpError) as err:
        check_graphs({"stage0": a, "exit1": b}, TENSORRT_8_2)
    msg = str(err.value)
    assert "stage0: node 'recip' (Reciprocal)" in msg and "--decompose rewrites it as Div" in msg
    assert "stage0: node 'nz' (NonZero)" in msg
    assert "exit1: node 'mod' (Mod)" in msg and "exit1: node '(graph)' (opset 17)" in msg
    assert "--opset 13" in msg and "2 of them are fixed by --decompose" in msg
    # TensorRT 10 reads opset 17 and has all three operators.
    check_graphs({"stage0": a, "exit1": b}, TENSORRT_10)


def test_the_8_2_table_stops_at_opset_13_and_knows_neither_layernorm_nor_cubic_resize():
    x = _float("x", [None, 4, 8, 8])
    ln = _model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln")], [x],
                [_float("y", [None, 4, 8, 8])], opset=17,
                inits=[numpy_helper.from_array(np.ones(8, np.float32), "s"),
                       numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    found = graph_problems("s", ln, TENSORRT_8_2)
    assert {p.op for p in found} == {"opset 17", "LayerNormalization"}
    assert graph_problems("s", ln, TENSORRT_10) == []
    cubic = _model([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="up", mode="cubic")],
                   [x], [_float("y", None)],
                   inits=[numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")])
    assert [p.reason for p in graph_problems("s", cubic, TENSORRT_8_2)] == [
        "mode 'cubic' is not one of nearest, linear"]
    assert graph_problems("s", cubic, TENSORRT_10) == []
    with pytest.raises(Exception, match="8.2, 8.5, 10"):
        tensorrt_ops("7.1")


def test_qdq_nodes_need_int8_zero_points_of_zero_and_int8_graphs_no_bool():
    x = _float("x", [None, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp_u8"),
             numpy_helper.from_array(np.array(3, np.int8), "zp_3"),
             numpy_helper.from_array(np.array(0, np.int8), "zp_0")]
    m = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp_u8"], ["q1"], name="q_uint8"),
                helper.make_node("QuantizeLinear", ["x", "s", "zp_3"], ["q2"], name="q_offset"),
                helper.make_node("QuantizeLinear", ["x", "s", "zp_0"], ["q3"], name="q_ok"),
                helper.make_node("DequantizeLinear", ["q3", "s", "zp_0"], ["d"], name="dq_ok"),
                helper.make_node("Greater", ["d", "x"], ["g"], name="cmp")],
               [x], [helper.make_tensor_value_info("g", TensorProto.BOOL, [None, 4])], inits=inits)
    found = graph_problems("s0", m, TENSORRT_8_2, no_bool=True)
    assert sorted((p.node, p.reason) for p in found) == [
        ("cmp", "bool tensor 'g' in an INT8 graph"),
        ("q_offset", "non-zero zero point"),
        ("q_uint8", "zero point type uint8; TensorRT 8.2 quantizes to int8")]
    assert not [p for p in graph_problems("s0", m, TENSORRT_8_2) if p.node == "cmp"]


def test_decomposed_graphs_compute_what_the_originals_do():
    x, y = _float("x", [None, 6]), _float("y", [None, 6])
    nodes = [helper.make_node("Reciprocal", ["x"], ["r"], name="recip"),
             helper.make_node("Mod", ["x", "y"], ["m"], name="mod", fmod=1),
             helper.make_node("Shrink", ["x"], ["sh"], name="shrink", lambd=0.7, bias=0.2),
             helper.make_node("IsInf", ["r"], ["inf"], name="isinf"),
             helper.make_node("Cast", ["inf"], ["inf_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sum", ["r", "m", "sh"], ["out"], name="sum")]
    model = _model(nodes, [x, y], [_float("out", [None, 6]), _float("inf_f", [None, 6])])
    rewritten, done = decompose(model, TENSORRT_8_2)
    assert sorted(op for _, op, _ in done) == ["IsInf", "Mod", "Reciprocal", "Shrink"]
    assert graph_problems("g", rewritten, TENSORRT_8_2) == []
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(5, 6)).astype(np.float32) * 3,
             "y": (rng.uniform(0.5, 2.0, size=(5, 6)) * rng.choice([-1, 1], (5, 6))).astype(
                 np.float32)}
    feeds["x"][0, :2] = 0.0  # 1/0 = inf: IsInf sees it
    for a, b in zip(_run(model, feeds), _run(rewritten, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_integer_mod_is_reported_without_a_decomposition():
    i = helper.make_tensor_value_info("i", TensorProto.INT32, [None, 3])
    m = _model([helper.make_node("Mod", ["i", "i"], ["o"], name="imod")], [i],
               [helper.make_tensor_value_info("o", TensorProto.INT32, [None, 3])])
    (p,) = graph_problems("g", m, TENSORRT_8_2)
    assert p.fix is None
    assert decompose(m, TENSORRT_8_2)[1] == []


# -- profiles and trtexec --------------------------------------------------------------------

def test_profiles_cover_the_batch_and_dynamic_dimensions_need_one():
    m = _model([helper.make_node("Relu", ["img"], ["y"])], [_float("img", [None, 3, None, None])],
               [_float("y", None)])
    profile, problems = graph_profile("stage0", m, (1, 4, 16), {})
    assert profile == {} and "dimension(s) [2, 3] are dynamic" in problems[0].reason
    assert problems[0].fix == "give one: --shape img=MIN:OPT:MAX"
    name, shapes = parse_shape_profile("img=1x3x32x32:4x3x64x64:16x3x128x128")
    profile, problems = graph_profile("stage0", m, (1, 4, 16), {name: shapes})
    assert problems == [] and profile["img"]["max"] == [16, 3, 128, 128]
    static = _model([helper.make_node("Relu", ["x"], ["y"])], [_float("x", [None, 16, 7, 7])],
                    [_float("y", None)])
    profile, _ = graph_profile("s", static, (1, 4, 16), {})
    assert profile == {"x": {"min": [1, 16, 7, 7], "opt": [4, 16, 7, 7], "max": [16, 16, 7, 7]}}
    assert trtexec_line("stages/s.onnx", "tensorrt/d/s.fp16.engine", profile, "fp16") == (
        "trtexec --onnx=stages/s.onnx --saveEngine=tensorrt/d/s.fp16.engine "
        "--minShapes=x:1x16x7x7 --optShapes=x:4x16x7x7 --maxShapes=x:16x16x7x7 "
        "--workspace=1024 --fp16")
    assert trtexec_line("a.onnx", "a.engine", profile, "int8", "c.cache").endswith(
        "--fp16 --int8 --calib=c.cache")
    # trtexec after 8.2 spells the workspace as a memory pool.
    assert "--memPoolSize=workspace:512 " in trtexec_line("a.onnx", "a.engine", profile, "fp16",
                                                          workspace_mb=512, release="10")
    # trtexec's NAME:SHAPE is one fixed shape; names may hold colons.
    assert parse_shape_profile("input:0:1x3x8x8") == (
        "input:0", {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]})


@pytest.mark.parametrize("text", ["0", "4:2:8", "1:2", "a:b:c"])
def test_bad_batch_profiles_are_refused(text):
    with pytest.raises(InputError, match="MIN:OPT:MAX"):
        parse_batch_profile(text)


@pytest.mark.parametrize("text", ["img", "img=1x3:2x3", "img=4x3:2x3:8x3", "img=1x3:2x3:8x3x1"])
def test_bad_shape_profiles_are_refused(text):
    with pytest.raises(InputError, match="NAME=MIN:OPT:MAX"):
        parse_shape_profile(text)


# -- a whole bundle --------------------------------------------------------------------------

def test_prepared_tx2_bundle_holds_checked_graphs_caches_and_trtexec_lines(tx2_bundle):
    plan = prepare_tensorrt(tx2_bundle, "jetson-tx2", batch=(1, 1, 32))
    bundle = read_bundle(tx2_bundle)  # every new file is hashed
    m = bundle.manifest
    assert m["tensorrt"] == plan and plan["release"] == "8.2" and plan["precision"] == "fp16"
    ids = [e["id"] for k in range(3) for e in (m["stages"][k], m["exits"][k])]
    assert list(plan["graphs"]) == ids
    g = plan["graphs"]["stage0"]
    assert g["onnx"] == "stages/stage0.onnx" and g["engine"] == \
        "tensorrt/jetson-tx2-gpu/stage0.fp16.engine"
    assert g["trtexec"] == ("trtexec --onnx=stages/stage0.onnx "
                            "--saveEngine=tensorrt/jetson-tx2-gpu/stage0.fp16.engine "
                            "--minShapes=x:1x1x28x28 --optShapes=x:1x1x28x28 "
                            "--maxShapes=x:32x1x28x28 --workspace=1024 --fp16")
    assert plan["workspace_mb"] == 1024
    import onnx
    for gid in ids:
        assert max(o.version for o in onnx.load(bundle.path(plan["graphs"][gid]["onnx"]))
                   .opset_import) <= 13
    # The cache carries the INT8 build's activation scales under the FP32 graph's names.
    int8 = onnx.load(bundle.path("stages/stage0.int8.onnx"))
    fp32 = onnx.load(bundle.path("stages/stage0.onnx"))
    scales = activation_scales(int8, fp32)
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    q_x = next(n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert scales[0] == ("x", float(inits[q_x.input[1]]))
    with open(bundle.path(g["calibration_cache"])) as f:
        lines = f.read().splitlines()
    assert lines[0] == "TRT-8201-EntropyCalibration2"
    assert lines[1:] == ["{}: {}".format(n, scale_hex(s)) for n, s in scales]
    assert len(lines) >= 3
    with open(bundle.path(plan["script"])) as f:
        script = f.read()
    assert all(plan["graphs"][gid]["trtexec"] in script for gid in ids)
    assert os.access(bundle.path(plan["script"]), os.X_OK)


def test_int8_on_the_tx2_warns_and_explains_fp16(tx2_bundle, caplog):
    with caplog.at_level(logging.WARNING):
        plan = prepare_tensorrt(tx2_bundle, "jetson-tx2", precision="int8")
    assert "no fast INT8" in caplog.text and "FP16 (--precision fp16) is the fast path" in caplog.text
    assert plan["warnings"] and plan["graphs"]["stage0"]["onnx"] == "stages/stage0.int8.onnx"
    assert plan["graphs"]["exit2"]["trtexec"].endswith("--fp16 --int8")


def test_preparing_again_replaces_the_old_plan(tx2_bundle):
    prepare_tensorrt(tx2_bundle, "jetson-tx2", precision="int8")
    prepare_tensorrt(tx2_bundle, "x86-nvidia", precision="fp32", batch=(2, 2, 2))
    m = read_bundle(tx2_bundle).manifest
    assert m["tensorrt"]["release"] == "10" and m["tensorrt"]["device"] == "x86-nvidia-gpu"
    with open(read_bundle(tx2_bundle).path("calibration/tensorrt/stage0.cache")) as f:
        assert f.readline() == "TRT-100300-EntropyCalibration2\n"
    assert not [f for f in m["files"] if "jetson-tx2" in f]


def test_bundle_without_int8_builds_or_tensorrt_is_refused(bundle):
    with pytest.raises(InputError, match="no INT8 build"):
        prepare_tensorrt(bundle, "jetson-tx2", precision="int8")
    with pytest.raises(InputError, match="has no TensorRT; targets with it: jetson-agx-orin, "
                                         "jetson-nano, jetson-orin-nano, jetson-tx2, "
                                         "jetson-xavier-nx, x86-nvidia"):
        prepare_tensorrt(bundle, "snapdragon-865")


def test_cli_prepares_and_reports_a_missing_tensorrt_for_on_device(tx2_bundle, capsys):
    from edgesdk.cli import main
    assert main(["build", tx2_bundle, "--toolchain", "tensorrt", "--batch", "1:8:64"]) == 0
    out = capsys.readouterr().out
    assert "parsed by TensorRT 8.2" in out and "tensorrt/trtexec.sh" in out
    plan = json.loads(json.dumps(read_bundle(tx2_bundle).manifest["tensorrt"]))
    assert plan["graphs"]["exit0"]["profile"]["s0_0"]["max"][0] == 64
    code = main(["build", tx2_bundle, "--toolchain", "tensorrt", "--on-device"])
    assert code != 0 and "tensorrt" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--toolchain", "tensorrt", "--emulate"],
                                  ["--toolchain", "tensorrt", "--processor", "gpu"],
                                  ["--toolchain", "tvm", "--precision", "fp16"],
                                  ["--decompose"]])
def test_cli_refuses_options_of_the_other_toolchain(bundle, argv, capsys):
    from edgesdk.cli import main
    assert main(["build", bundle] + argv) != 0
    assert "do not apply to --toolchain" in capsys.readouterr().err
