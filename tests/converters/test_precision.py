"""Target precision rules: defaults, slow-precision warnings, TensorRT's INT8 scheme, FP16."""
import json

import numpy as np
import pytest

from conftest import PREPROCESSING
from edgesdk.bundle import read_bundle
from edgesdk.cli import main
from edgesdk.converters import convert
from edgesdk.converters.precision import plan_precisions
from edgesdk.converters.onnxruntime.quantize import int8_rule_violations
from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle
from edgesdk.targets import get_target

KW = dict(stages_attr="blocks", heads_attr="exits", preprocessing=PREPROCESSING, progress=False)


@pytest.fixture(scope="module")
def calib(mnist_split):
    _, (x, y) = mnist_split
    return x, y


def test_plans_follow_each_boards_rules():
    host, tx2, sd = (get_target(n) for n in ("host", "jetson-tx2", "snapdragon-865"))
    assert plan_precisions(host).select == "fp32" and plan_precisions(host).precisions == ["fp32"]
    p = plan_precisions(tx2)
    assert (p.select, p.precisions, p.warnings) == ("fp16", ["fp32", "fp16"], [])
    p = plan_precisions(tx2, quantize="int8", have_data=True)
    assert p.select == "int8" and "no fast INT8" in p.warnings[0]
    p = plan_precisions(sd)
    assert p.select == "fp32" and "needs calibration data" in p.warnings[0]
    assert plan_precisions(sd, have_data=True).select == "int8"
    assert "slower than FP32" in plan_precisions(host, precisions=["fp16"]).warnings[0]
    with pytest.raises(InputError, match="runs precisions fp32, fp16, int8; bf16 requested"):
        plan_precisions(host, quantize="bf16")


@pytest.fixture(scope="module")
def int8_selected(tmp_path_factory, trained_tiny, calib):
    out = tmp_path_factory.mktemp("q") / "int8.edgebundle"
    report = convert(trained_tiny, calib[0][:8], str(out), quantize="int8", calibration_data=calib, **KW)
    return str(out), report


def test_quantize_int8_selects_int8_everywhere_and_reports_every_exit(int8_selected, calib):
    path, report = int8_selected
    m = read_bundle(path).manifest
    assert all(e["precision"] == "int8" and e["file"].endswith(".int8.onnx")
               for e in m["stages"] + m["exits"])
    assert m["quantization"]["selected"] == "int8" and m["quantization"]["rules"]["target"] == "host"
    assert len(report.exit_table) == 4
    for row in report.exit_table[:3]:
        assert 0.9 <= row["agreement"] <= 1.0
        assert abs(row["accuracy_fp32"] - row["accuracy_selected"]) <= 0.05
    early = report.exit_table[3]
    # 600 labelled samples certify at 99% no less than 0.77 points: the row says 0.8.
    assert early["exit"] == "early exit (recalibrated, within 0.8 points at 99%)"
    assert early["agreement"] is None and early["max_accuracy_drop"] == 0.8
    for k in ("fp32", "selected"):
        # thresholds recalibrated for each: within 0.8 points of its final exit, cheaper than all
        assert early["accuracy_" + k] >= report.exit_table[2]["accuracy_" + k] - 0.03
        assert 0 < early["cost_" + k] < 1
    # The reference outputs are the selected builds'; they check out on this machine.
    assert main(["validate", path, "--check"]) == 0
    assert m["reference"]["atol"] > 1e-4


def test_host_int8_uses_uint8_activations_tensorrt_targets_zero_points(int8_selected, trained_tiny,
                                                                      calib, tmp_path):
    path, _ = int8_selected
    host = read_bundle(path)
    # uint8 activations (and their non-zero zero points) break TensorRT's rule: the check finds them.
    found = int8_rule_violations(host.path(host.manifest["stages"][0]["file"]), symmetric_int8=True)
    assert any("uint8, not int8" in v for v in found)
    out = tmp_path / "tx2.edgebundle"
    report = convert(trained_tiny, calib[0][:8], str(out), target="jetson-tx2", quantize="int8",
                     calibration_data=calib, **KW)
    assert any("no fast INT8" in w for w in report.precision_warnings)
    tx2 = read_bundle(str(out))
    for e in tx2.manifest["stages"] + tx2.manifest["exits"]:
        assert e["precision"] == "int8"
        assert int8_rule_violations(tx2.path(e["file"]), symmetric_int8=True, no_bool=True) == []
        assert e["builds"][1]["activations"] == "int8 symmetric"
    assert tx2.manifest["quantization"]["rules"]["int8_activations"] == "int8-symmetric"
    assert tx2.manifest["quantization"]["warnings"] == report.precision_warnings


def test_tx2_default_is_fp16_with_float32_edges(trained_tiny, calib, tmp_path):
    out = tmp_path / "fp16.edgebundle"
    report = convert(trained_tiny, calib[0][:8], str(out), target="jetson-tx2", **KW)
    model = load_bundle(str(out))
    assert all(b["precision"] == "fp16" for b in model.builds.values())
    logits = model.exit_logits(calib[0][:64])
    assert all(l.dtype == np.float32 for l in logits)
    fp32 = load_bundle(str(out), builds="fp32").exit_logits(calib[0][:64])
    assert max(float(np.abs(a - b).max()) for a, b in zip(logits, fp32)) < 0.05
    assert all(r["agreement"] >= 0.98 for r in report.exit_table)  # no labels: no early-exit row


def test_bad_calibration_data_is_refused_and_nothing_written(trained_tiny, calib, tmp_path):
    x, y = calib
    out = tmp_path / "b.edgebundle"
    for data, message in (((x[:8], y[:8]), "at least 16 are needed"),
                          ((x[:, :, :20], y), "shape"),
                          ((x.astype(np.float64) * np.nan, y), "finite float"),
                          ((x, y[:10]), "one label per input")):
        with pytest.raises(InputError, match=message):
            convert(trained_tiny, x[:8], str(out), quantize="int8", calibration_data=data, **KW)
        assert not out.exists()


def test_cli_quantize_prints_the_exit_table(trained_tiny, calib, tmp_path, capsys):
    import torch
    w = tmp_path / "w.pt"
    torch.save(trained_tiny.state_dict(), str(w))
    data = tmp_path / "cal.npz"
    np.savez(str(data), x=calib[0], y=calib[1])
    import os
    model = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models.py")
    code = main(["convert", "--model", model + ":TinyNet", "--weights", str(w), "--stages-attr",
                 "blocks", "--heads-attr", "exits", "--example-data", str(data), "--quantize",
                 "int8", "-o", str(tmp_path / "q.edgebundle")])
    out = capsys.readouterr().out
    assert code == 0 and "agreement" in out and "exit 2" in out and "recalibrated" in out
    code = main(["inspect", str(tmp_path / "q.edgebundle"), "--json"])
    assert json.loads(capsys.readouterr().out)["quantization"]["selected"] == "int8"


def test_exit_aware_calibration_sees_only_samples_that_reach_each_stage(trained_tiny, calib, tmp_path):
    out = tmp_path / "ea.edgebundle"
    convert(trained_tiny, calib[0][:8], str(out), quantize="int8", calibration_data=calib,
            threshold=0.9, exit_aware=True, **KW)
    m = read_bundle(str(out)).manifest
    seen = [e["builds"][1]["calibration"]["samples"] for e in m["stages"]]
    assert seen[0] == min(len(calib[0]), 512) and seen[0] >= seen[1] > seen[2] >= 16
    assert all(e["builds"][1]["calibration"]["exit_aware"] for e in m["stages"])
    assert m["exits"][1]["builds"][1]["calibration"]["samples"] == seen[1]
    with pytest.raises(InputError, match="needs exit thresholds"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "x.edgebundle"), quantize="int8",
                calibration_data=calib, exit_aware=True, **KW)
    with pytest.raises(InputError, match="leaves stage1 with 0 of 600 samples"):
        convert(trained_tiny, calib[0][:8], str(tmp_path / "x.edgebundle"), quantize="int8",
                calibration_data=calib, threshold=0.11, exit_aware=True, **KW)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods_are_applied_and_recorded(trained_tiny, calib, tmp_path, method):
    out = tmp_path / "m.edgebundle"
    x, y = calib[0][:64], calib[1][:64]
    report = convert(trained_tiny, x[:8], str(out), quantize="int8", calibration_data=(x, y),
                     calibration_method=method, **KW)
    m = read_bundle(str(out)).manifest
    assert all(e["builds"][1]["calibration"]["method"] == method for e in m["stages"])
    assert all(r["agreement"] >= 0.8 for r in report.exit_table[:-1])


def test_inspect_shows_the_exit_table(int8_selected, capsys):
    assert main(["inspect", int8_selected[0]]) == 0
    out = capsys.readouterr().out
    assert "selected builds vs fp32 on 600 calibration samples" in out
    assert "early exit (recalibrated, within" in out and "int8" in out


def test_report_shows_the_compression_of_a_bundle(int8_selected, tmp_path, capsys):
    from edgesdk.runtime.profiler import profile_bundle
    path, report = int8_selected
    db = str(tmp_path / "p.sqlite")
    profile_bundle(path, [1], warmup=1, repeats=3, db=db, progress=False)
    out = tmp_path / "report"
    assert main(["report", db, "-o", str(out), "--bundle", path]) == 0
    md = (out / "report.md").read_text()
    assert "## compression of bundle int8" in md and "| stage0 | onnx int8 | - |" in md
    assert "early exit (recalibrated, within" in md
    row = report.exit_table[0]
    assert "| 0 | {:.2%} | {:.2%} | {:.2%} |".format(
        row["accuracy_fp32"], row["accuracy_selected"], row["agreement"]) in md
    assert "compression of bundle" in (out / "report.html").read_text()


def test_fp16_keeps_in_float32_the_nodes_onnxruntime_cannot_type(tmp_path):
    """An attention block over a depthwise convolution (LayerNorm, softmax, a scale computed
    from the shape) converts to an FP16 graph that loads and agrees with FP32."""
    import onnx
    import torch
    from torch import nn
    from edgesdk.converters.onnx_export import export_graph
    from edgesdk.converters.onnxruntime.quantize import to_fp16
    from edgesdk.runtime.executors.ort import make_session

    class Attention(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.dwc = nn.Conv2d(c, c, 3, 1, 1, groups=c)
            self.norm = nn.LayerNorm(c)
            self.q, self.k = nn.Linear(c, c), nn.Linear(c, c)
            self.pw = nn.Conv2d(c, c, 1)

        def forward(self, x):
            y = self.dwc(x)
            n, c, h, w = y.shape
            t = self.norm(y.flatten(2).transpose(1, 2))
            a = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / c ** 0.5, -1)
            t = (a @ t).transpose(1, 2).reshape(n, c, h, w)
            return self.pw(nn.functional.gelu(t)) + nn.functional.interpolate(x, size=(h, w))
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    src, dst = str(tmp_path / "a.onnx"), str(tmp_path / "a.fp16.onnx")
    onnx.save(export_graph(Attention().eval(), [x], ["x"], ["y"], 13, "stage 0"), src)
    kept = to_fp16(src, dst)
    names = {n.name for n in onnx.load(src).graph.node}
    assert kept and set(kept) <= names     # onnxconverter-common alone makes a graph ORT refuses
    got, want = (make_session(p).run(None, {"x": x.numpy()})[0] for p in (dst, src))
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)
    fp16 = onnx.load(dst).graph
    assert fp16.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT   # edges kept
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.initializer)


def test_builds_below_the_agreement_floor_are_named_with_their_exit(int8_selected):
    from edgesdk.converters.convert import disagreeing_builds
    m = read_bundle(int8_selected[0]).manifest
    assert disagreeing_builds(m, 0.5) == []
    lines = disagreeing_builds(m, 1.01)   # no build can reach it
    assert len(lines) == len(m["stages"]) + len(m["exits"])
    assert all(l.startswith("the int8 build of ") and "at exit " in l for l in lines)
    assert any("of stage0 agrees" in l for l in lines) and any("of exit2 agrees" in l for l in lines)
