"""hls4ml builds of a Brevitas W4A8 multi-exit model for the Ultra96-V2: C simulations that
agree with ONNX Runtime through the runtime's early exit, types from quantizers and data,
projects for Vitis HLS, labelled estimates, and the errors for what cannot be built."""
import json
import os
import shutil
import tarfile

import numpy as np
import pytest

pytest.importorskip("hls4ml")
pytest.importorskip("brevitas")
pytestmark = pytest.mark.slow  # g++ builds of hls4ml's C simulations: about 4 minutes

from conftest import PREPROCESSING, snapshot  # noqa: E402

from edgesdk.bundle import read_bundle  # noqa: E402
from edgesdk.converters.hls4ml.build import build_fpga  # noqa: E402
from edgesdk.converters.hls4ml.driver import unsupported_layers  # noqa: E402
from edgesdk.converters.hls4ml.graph import channels_last  # noqa: E402
from edgesdk.errors import BuildError, CalibrationError, InputError  # noqa: E402
from edgesdk.runtime.engine import load_bundle  # noqa: E402


def w4a8_net():
    """Two stages and two heads of Brevitas layers with power-of-two scales (what maps exactly
    onto fixed point): 4-bit weights, 8-bit activations."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint
    from brevitas.quant import Uint8ActPerTensorFixedPoint
    from torch import nn
    from edgesdk.converters import MultiExitModel

    def block(c_in, c_out):
        return [qnn.QuantConv2d(c_in, c_out, 3, padding=1, stride=2, bias=False,
                                weight_bit_width=4, weight_quant=Int8WeightPerTensorFixedPoint),
                qnn.QuantReLU(bit_width=8, act_quant=Uint8ActPerTensorFixedPoint)]

    def head(features):
        return nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), qnn.QuantLinear(
            features, 10, bias=True, weight_bit_width=4, weight_quant=Int8WeightPerTensorFixedPoint))
    stages = [nn.Sequential(qnn.QuantIdentity(bit_width=8, act_quant=Int8ActPerTensorFixedPoint),
                            *block(1, 4)), nn.Sequential(*block(4, 8))]
    return MultiExitModel(stages, [head(4 * 7 * 7), head(8 * 3 * 3)])


@pytest.fixture(scope="module")
def w4a8_master(tmp_path_factory, mnist_split):
    import torch
    from models import train_quickly
    from edgesdk.converters import convert
    (x, y), (xc, _) = mnist_split
    torch.manual_seed(0)
    net = train_quickly(w4a8_net(), x[:1000], y[:1000]).eval()
    out = str(tmp_path_factory.mktemp("fpga") / "w4a8.edgebundle")
    convert(net, xc[:8], out, preprocessing=PREPROCESSING, progress=False)
    return out


@pytest.fixture(scope="module")
def built(w4a8_master, mnist_split, tmp_path_factory):
    _, (xc, _) = mnist_split
    root = str(tmp_path_factory.mktemp("fpga-built") / "w4a8.edgebundle")
    shutil.copytree(w4a8_master, root)
    records = build_fpga(root, "ultra96-v2", calibration_data=xc[:128], reuse_factor=4,
                         progress=False)
    return root, records


def test_csim_builds_agree_with_onnxruntime_through_early_exit(built, mnist_split):
    root, records = built
    _, (xc, yc) = mnist_split
    x, y = xc[128:428], yc[128:428]  # not the samples the types were chosen on
    csim = load_bundle(root, builds="fpga-csim")
    ort = load_bundle(root)
    assert {b["format"] for b in csim.builds.values()} == {"fpga-csim"}
    for a, b in zip(csim.exit_logits(x), ort.exit_logits(x)):
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
        # Weights on their quantizers' grids, float biases typed exactly: float rounding only
        assert np.abs(a - b).max() < 1e-3
    got, want = csim.run(x, thresholds=[0.9, None]), ort.run(x, thresholds=[0.9, None])
    assert 0 < got.exit_counts()[0] < len(x)
    assert (got.labels == want.labels).mean() >= 0.99
    assert (got.labels == y).mean() > 0.6


def test_stage_builds_carry_the_feature_map_the_next_stage_takes(built, mnist_split):
    root, records = built
    _, (xc, _) = mnist_split
    csim = load_bundle(root, builds="fpga-csim")
    ort = load_bundle(root)
    state = csim.stages[0].run([xc[:16]])
    expected = ort.stages[0].run([xc[:16]])
    assert state[0].shape == expected[0].shape == (16, 4, 14, 14)
    np.testing.assert_allclose(state[0], expected[0], atol=2.0 ** -4)  # within 2 LSBs
    assert records[0]["hls"]["output_shapes"] == [[14, 14, 4]]  # NHWC, no Transpose in HLS


def test_build_records_types_projects_and_labelled_estimates(built):
    root, records = built
    m = read_bundle(root).manifest  # every file hashed
    stage0 = records[0]
    assert stage0["format"] == "fpga-csim" and stage0["precision"] == "fixed"
    hls = stage0["hls"]
    assert hls["io_type"] == "io_stream" and records[1]["hls"]["io_type"] == "io_parallel"
    assert hls["part"] == "xczu3eg-sbva484-1-e" and hls["reuse_factor"] == 4
    # The input type came from the data, the rest from the quantizers, not fixed<16,6>.
    assert hls["precision"]["set"]["global_in"].startswith("fixed<16,")
    conv = [v for k, v in hls["precision"]["layers"].items() if k.startswith("Conv2D")][0]
    assert conv["weight_t"].startswith("fixed<4,")
    assert records[1]["hls"]["precision"]["set"]["global_in"].startswith("ufixed<8,")  # 8-bit state
    # The head's float bias (no quantizer) gets the type of its values, not the default.
    dense = [v for k, v in records[1]["hls"]["precision"]["layers"].items() if k.startswith("Dense")][0]
    assert not dense["bias_t"].startswith("fixed<16,8,")
    assert "MatMul_0.bias" in records[1]["hls"]["precision"]["set"]
    assert "not synthesis" in stage0["estimate"]["label"]
    assert stage0["estimate"]["latency_cycles"] > 0 and stage0["estimate"]["lut"] > 0
    board = m["fpga"]["ultra96-v2"]
    assert board["fits"] and board["budget"]["dsp"] == 360
    with tarfile.open(os.path.join(root, hls["project"])) as tar:
        names = tar.getnames()
    assert "stage0/build_prj.tcl" in names and "stage0/firmware/stage0.cpp" in names


def test_hand_types_that_overflow_on_the_data_name_the_layer(w4a8_master, mnist_split, tmp_path):
    _, (xc, _) = mnist_split
    root = str(tmp_path / "w4a8.edgebundle")
    shutil.copytree(w4a8_master, root)
    before = snapshot(root)
    with pytest.raises(CalibrationError, match="layer 'global_in' of stage0: the calibration "
                                               r"data reaches \[-0.42.*fixed<8,1>"):
        build_fpga(root, "ultra96-v2", calibration_data=xc[:32], reuse_factor=4,
                   precision={"stage0": {"global_in": "fixed<8,1>"}}, progress=False)
    with pytest.raises(InputError, match="has no layer"):
        build_fpga(root, "ultra96-v2", calibration_data=xc[:32],
                   precision={"stage0": {"nope": "fixed<8,1>"}}, progress=False)
    assert snapshot(root) == before


def test_a_graph_over_the_boards_budget_is_refused_with_the_knob(w4a8_master, mnist_split,
                                                                 tmp_path):
    _, (xc, _) = mnist_split
    root = str(tmp_path / "w4a8.edgebundle")
    shutil.copytree(w4a8_master, root)
    # A 16-bit input makes exit0's 1960 products DSP-sized: more than the PYNQ-Z2's 220.
    with pytest.raises(BuildError, match=r"(?s)exit0 does not fit pynq-z2 \(estimate\).*1960 DSP "
                                         r"of 220.*raise the reuse factor to 9 or more"):
        build_fpga(root, "pynq-z2", calibration_data=xc[:32], reuse_factor=1,
                   precision={"exit0": {"global_in": "fixed<16,6>"}}, progress=False)
    with pytest.raises(InputError, match="no FPGA fabric"):
        build_fpga(root, "jetson-tx2", progress=False)


def test_layers_hls4ml_cannot_map_are_reported_for_every_graph():
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graphs = {}
    for gid, op in (("stage0", "Erf"), ("exit0", "Sin")):
        model = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"])], gid,
                                                    [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        graphs[gid] = channels_last(model)
    found = dict(unsupported_layers(graphs))
    assert set(found) == {"stage0", "exit0"}
    assert "Erf" in found["stage0"] and "Sin" in found["exit0"]
    json.dumps(found)  # plain messages


def float_net():
    """The same two-stage layout in float, with batch norm (folded into the convolutions by
    the ONNX export), for the float path: every type from data."""
    from torch import nn
    from models import conv
    from edgesdk.converters import MultiExitModel

    def head(features):
        return nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(features, 10))
    return MultiExitModel([conv(1, 4, 2), conv(4, 8, 2)], [head(4 * 7 * 7), head(8 * 3 * 3)])


def test_float_graphs_get_every_type_from_data_and_agree_with_onnxruntime(mnist_split,
                                                                          tmp_path):
    import torch
    from models import train_quickly
    from edgesdk.converters import convert
    (x, y), (xc, _) = mnist_split
    torch.manual_seed(0)
    net = train_quickly(float_net(), x[:1000], y[:1000]).eval()
    root = str(tmp_path / "float.edgebundle")
    convert(net, xc[:8], root, preprocessing=PREPROCESSING, progress=False)
    before = snapshot(root)
    # A type by hand, named as in hls4ml's config (the ONNX node), checked on the data:
    # the convolution's outputs reach several units, more than fixed<8,1> holds.
    with pytest.raises(CalibrationError, match="layer 'Conv_0' of stage0"):
        build_fpga(root, "ultra96-v2", calibration_data=xc[:64], reuse_factor=8,
                   precision={"stage0": {"Conv_0": "fixed<8,1>"}}, progress=False)
    assert snapshot(root) == before
    records = build_fpga(root, "ultra96-v2", calibration_data=xc[:128], reuse_factor=8,
                         progress=False)
    for r in records:
        prec = r["hls"]["precision"]
        assert prec["chosen_from"] == "calibration data (16 bits)"
        typed = [t for types in prec["layers"].values() for t in types.values()]
        assert not any(t.startswith("fixed<16,8,") for t in typed)  # no default left
        for lname, types in prec["layers"].items():
            if "weight_t" in types:  # weights and biases from their values: small integer parts
                integer = int(types["weight_t"].split(",")[1])
                assert integer <= 4, (lname, types)
    assert "Conv_0.weight" in records[0]["hls"]["precision"]["set"]
    csim, ort = load_bundle(root, builds="fpga-csim"), load_bundle(root)
    x_test = xc[128:428]
    for a, b in zip(csim.exit_logits(x_test), ort.exit_logits(x_test)):
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
        assert np.abs(a - b).max() < 5e-3  # 16-bit types with the integer bits the data needs


def _fake_pynq(monkeypatch, simulations):
    """A stand-in for the board's ``pynq``: an overlay's DMA streams the batch through the
    graph's C simulation (``simulations``: bitstream file name -> FpgaCsimGraph), as the fabric
    would; buffers are numpy arrays."""
    import sys
    import types
    pynq = types.ModuleType("pynq")

    class Buffer(np.ndarray):
        def freebuffer(self):
            self.freed = True

    class Channel(object):
        def __init__(self, dma, send):
            self.dma, self.send = dma, send

        def transfer(self, buf):
            if self.send:
                self.dma.pending = np.array(buf)
            else:
                sim = self.dma.sim
                for i, row in enumerate(self.dma.pending):
                    out = [np.empty((1, s), np.float32) for s in sim.out_sizes]
                    sim.fn(*([np.ascontiguousarray(row)] + [o[0] for o in out]))
                    buf[i] = out[0][0]

        def wait(self):
            pass

    class Dma(object):
        def __init__(self, sim):
            self.sim = sim
            self.sendchannel, self.recvchannel = Channel(self, True), Channel(self, False)

    class Overlay(object):
        def __init__(self, path):
            # edgesdk hands PYNQ a private, checked copy of the bitstream with its .hwh.
            name = os.path.basename(path)
            assert "/edgesdk-verified-" in path and ".edgebundle" not in path, path
            with open(path, "rb") as f:
                assert f.read() == b"bitstream " + name[:-4].encode()
            assert os.path.isfile(path[:-4] + ".hwh")
            self.axi_dma_0 = Dma(simulations[name])

    pynq.Overlay = Overlay
    pynq.allocate = lambda shape, dtype: np.zeros(shape, dtype).view(Buffer)
    monkeypatch.setitem(sys.modules, "pynq", pynq)


def test_bitstreams_register_as_pynq_builds_and_run_through_the_dma(built, mnist_split,
                                                                    tmp_path, monkeypatch):
    from edgesdk.converters.hls4ml.build import register_bitstreams
    root = str(tmp_path / "w4a8.edgebundle")
    shutil.copytree(built[0], root)
    bits = tmp_path / "bitstreams"
    bits.mkdir()
    with pytest.raises(InputError, match="every graph needs GRAPH.bit and GRAPH.hwh"):
        register_bitstreams(root, "ultra96-v2", str(bits))
    for gid in ("stage0", "exit0", "stage1", "exit1"):
        (bits / (gid + ".bit")).write_bytes(b"bitstream " + gid.encode())
        (bits / (gid + ".hwh")).write_text("<hwh/>")
    register_bitstreams(root, "ultra96-v2", str(bits))
    csim = load_bundle(root, builds="fpga-csim")
    bundle = read_bundle(root)
    sims = {"{}.bit".format(e["id"]): g for e, g in zip(
        bundle.manifest["stages"] + bundle.manifest["exits"], csim.stages + csim.heads)}
    _fake_pynq(monkeypatch, sims)
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # as on the Ultra96's A53s
    from edgesdk.runtime.executors.pynq import PynqGraph
    monkeypatch.setattr(PynqGraph, "device_nodes", (os.__file__,))
    board = load_bundle(root, builds="pynq")
    assert {b["format"] for b in board.builds.values()} == {"pynq"}
    _, (xc, _) = mnist_split
    for a, b in zip(board.exit_logits(xc[:20]), csim.exit_logits(xc[:20])):
        np.testing.assert_array_equal(a, b)


def test_the_cli_drives_the_hls4ml_toolchain(w4a8_master, mnist_split, tmp_path, capsys):
    from conftest import cli
    _, (xc, _) = mnist_split
    root = str(tmp_path / "w4a8.edgebundle")
    shutil.copytree(w4a8_master, root)
    data = str(tmp_path / "cal.npz")
    np.savez(data, x=xc[:32])
    before = snapshot(root)
    code, _, err = cli(capsys, "build", root, "--toolchain", "hls4ml", "--layer-precision", "x")
    assert code == 4 and "--layer-precision takes GRAPH:LAYER=TYPE" in err
    code, _, err = cli(capsys, "build", root, "--toolchain", "hls4ml", "--reuse-factor", "4",
                       "--calibration-data", data, "--layer-precision",
                       "stage0:global_in=fixed<8,1>")
    assert code == 4 and "layer 'global_in' of stage0" in err
    code, _, err = cli(capsys, "build", root, "--toolchain", "hls4ml", "--tuning-db", "db")
    assert code == 4 and "--tuning-db: these options do not apply to --toolchain hls4ml" in err
    assert snapshot(root) == before


def _vitis_solution(project, name, dsp):
    """What Vitis HLS leaves after C synthesis, as much as hls4ml's report parser reads."""
    sln = os.path.join(project, name + "_prj")
    os.makedirs(os.path.join(sln, "solution1", "syn", "report"))
    with open(os.path.join(sln, "hls.app"), "w") as f:
        f.write('<project xmlns="x"><solutions><solution name="solution1"/></solutions></project>')
    with open(os.path.join(sln, "solution1", "syn", "report", name + "_csynth.xml"), "w") as f:
        f.write("<profile><UserAssignments><TargetClockPeriod>5.00</TargetClockPeriod>"
                "</UserAssignments><PerformanceEstimates><SummaryOfTimingAnalysis>"
                "<EstimatedClockPeriod>4.10</EstimatedClockPeriod></SummaryOfTimingAnalysis>"
                "<SummaryOfOverallLatency><Best-caseLatency>900</Best-caseLatency>"
                "<Worst-caseLatency>1000</Worst-caseLatency><Interval-min>800</Interval-min>"
                "<Interval-max>810</Interval-max></SummaryOfOverallLatency>"
                "</PerformanceEstimates><AreaEstimates><Resources><BRAM_18K>6</BRAM_18K>"
                "<DSP>{}</DSP><FF>5000</FF><LUT>7000</LUT><URAM>0</URAM></Resources>"
                "<AvailableResources><BRAM_18K>432</BRAM_18K><DSP>360</DSP><FF>141120</FF>"
                "<LUT>70560</LUT><URAM>0</URAM></AvailableResources></AreaEstimates>"
                "</profile>".format(dsp))


def test_synthesis_reports_are_read_beside_the_estimates(built, tmp_path, capsys):
    import tarfile
    from conftest import cli
    root = str(tmp_path / "w4a8.edgebundle")
    shutil.copytree(built[0], root)
    projects = tmp_path / "vitis"
    projects.mkdir()
    code, _, err = cli(capsys, "hls-reports", root, str(projects))
    assert code == 4 and "not the extracted HLS project" in err
    m = read_bundle(root).manifest
    for e in m["stages"] + m["exits"]:
        (b,) = [b for b in e["builds"] if b["format"] == "fpga-csim"]
        with tarfile.open(os.path.join(root, b["hls"]["project"])) as tar:
            tar.extractall(str(projects))
    code, _, err = cli(capsys, "hls-reports", root, str(projects))
    assert code == 4 and "no C-synthesis report" in err
    from edgesdk.converters.hls4ml.graph import project_name
    for e in m["stages"] + m["exits"]:
        name = project_name(e["id"])
        _vitis_solution(str(projects / name), name, dsp=20)
    code, out, err = cli(capsys, "hls-reports", root, str(projects))
    assert code == 0, err
    assert "synthesis / estimate" in out
    (b,) = [b for b in read_bundle(root).manifest["stages"][0]["builds"]
            if b["format"] == "fpga-csim"]
    syn = b["hls"]["synthesis"]
    assert (syn["dsp"], syn["lut"], syn["bram_18k"], syn["latency_cycles_worst"]) == \
        (20, 7000, 6, 1000)
    assert syn["latency_ms_worst"] == pytest.approx(1000 * 4.10 / 1e6)
    assert syn["vs_estimate"]["lut"] == pytest.approx(7000 / b["estimate"]["lut"])


def test_hls4ml_strategy_io_type_and_config_files_are_taken(w4a8_master, mnist_split, tmp_path,
                                                            capsys):
    from conftest import cli
    _, (xc, _) = mnist_split
    root = str(tmp_path / "w4a8.edgebundle")
    shutil.copytree(w4a8_master, root)
    data = str(tmp_path / "cal.npz")
    np.savez(data, x=xc[:32])
    config = tmp_path / "hls.yml"
    # A type the data overflows, given the way hls4ml configs give it: refused by layer.
    config.write_text("Model:\n  ReuseFactor: 4\n  Strategy: Resource\nLayerName:\n"
                      "  stage0:global_in:\n    Precision:\n      result: ap_fixed<8,1>\n")
    code, _, err = cli(capsys, "build", root, "--toolchain", "hls4ml", "--hls-config",
                       str(config), "--calibration-data", data)
    assert code == 4 and "layer 'global_in' of stage0" in err and "ap_fixed<8,1>" in err
    config.write_text("Model:\n  Precision: ap_fixed<16,6>\n")
    code, _, err = cli(capsys, "build", root, "--toolchain", "hls4ml", "--hls-config",
                       str(config))
    assert code == 4 and "Model Precision" in err
    config.write_text("Model:\n  ReuseFactor: 4\n  Strategy: Resource\n")
    code, _, err = cli(capsys, "build", root, "--toolchain", "hls4ml", "--hls-config",
                       str(config), "--io-type", "io_parallel", "--calibration-data", data)
    assert code == 0, err
    for e in read_bundle(root).manifest["stages"]:
        (b,) = [b for b in e["builds"] if b["format"] == "fpga-csim"]
        assert b["hls"]["strategy"] == "Resource" and b["hls"]["io_type"] == "io_parallel"
        assert b["hls"]["reuse_factor"] == 4
    _, (x, _) = mnist_split
    csim = load_bundle(root, builds="fpga-csim").exit_logits(x[:8])
    ref = load_bundle(root).exit_logits(x[:8])   # the QCDQ graphs ONNX Runtime runs
    assert (csim[-1].argmax(1) == ref[-1].argmax(1)).mean() >= 0.75
