"""TVM builds of the graphs a stage runs beside its own: a masked block's masker and patch
graph (a mosaic of any width) and gated blocks' graphs. The runtime runs them with the stage's
TVM build, matching ONNX Runtime; the aarch64 builds match under qemu; none holds an operator
TensorRT 8.2 cannot parse."""
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tvm")

from edgesdk.bundle import read_bundle  # noqa: E402
from edgesdk.converters import MultiExitModel, convert  # noqa: E402
from edgesdk.converters.gated import GatedBlock, dense_gates  # noqa: E402
from edgesdk.converters.spatial import MaskedBlock  # noqa: E402
from edgesdk.converters.tvm.build import build_tvm  # noqa: E402
from edgesdk.manifest import side_graphs  # noqa: E402
from edgesdk.runtime import load_bundle  # noqa: E402
from edgesdk.runtime.executors.tvm import TvmGraph  # noqa: E402
from models import Head, conv  # noqa: E402


class Intensity(nn.Module):
    """Region logits from pooled feature intensity, far from the threshold for most regions."""

    def __init__(self, g):
        super().__init__()
        self.pool = nn.AvgPool2d(g)

    def forward(self, x):
        return (self.pool(x).mean(dim=1, keepdim=True) - 0.15) * 200.0


class SignGate(nn.Module):
    """+-50 skip logits by the sign of the input's mean less ``offset``."""

    def __init__(self):
        super().__init__()
        self.offset = 0.0

    def forward(self, x):
        return torch.sign(x.flatten(1).mean(1, keepdim=True) - self.offset) * 50.0


def _branch(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out))


@pytest.fixture(scope="module")
def side_bundle(tmp_path_factory, mnist_split):
    """Stage 1 a masked block, stage 2 a gated downsampling block and a gated block; host and
    Jetson TX2 CPU TVM builds at batch 1."""
    torch.manual_seed(0)
    masked = MaskedBlock(_branch(8, 8), Intensity(4), granularity=4)
    gated = nn.Sequential(
        GatedBlock(_branch(8, 16, 2), SignGate(), post=nn.ReLU(),
                   shortcut=nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16))),
        GatedBlock(_branch(16, 16), SignGate()))
    net = MultiExitModel([conv(1, 8), masked, gated], [Head(8), Head(8), Head(16)]).eval()
    # Each gate splits the digits near the median of what it reads: mixed batches.
    seen = {}
    hooks = [g.register_forward_hook(lambda m, i, o, g=g: seen.__setitem__(g, i[0]))
             for g in gated]
    with torch.no_grad(), dense_gates(net):
        net(torch.from_numpy(mnist_split[1][0][:64]))
    for g in gated:   # in the widest gap among the middle half: no sample near it
        v = np.sort(seen[g].flatten(1).mean(1).numpy())[16:48]
        i = int(np.argmax(np.diff(v)))
        g.gate.offset = float(v[i] + v[i + 1]) / 2
    for h in hooks:
        h.remove()
    path = str(tmp_path_factory.mktemp("side") / "side.edgebundle")
    convert(net, mnist_split[1][0][:8], path, progress=False)
    build_tvm(path, "host", "cpu", batch=1, progress=False)
    build_tvm(path, "jetson-tx2", "cpu", batch=1, progress=False)
    return path


def test_side_graphs_get_tvm_builds_and_run_with_the_stages_tvm_build(side_bundle, mnist_split):
    m = read_bundle(side_bundle).manifest
    side = [g for e in m["stages"] for g in side_graphs(e)]
    assert len(side) == 2 + 4      # masker, patch; entry, run0, skip0, run1
    assert all(sorted(b["device"] for b in g["builds"]) == ["host-cpu", "jetson-tx2-cpu"]
               for g in side)
    x = mnist_split[1][0][:24]
    ort = load_bundle(side_bundle)
    tvm = load_bundle(side_bundle, builds=("tvm", "fp32"))
    spatial, gated = tvm.spatial_stages()[0], tvm.adaptive_stages()[0]
    for graph in (spatial.masker, spatial.patch, gated.entry, gated.blocks[0].run):
        assert isinstance(getattr(graph, "graph", graph), TvmGraph)
    assert not isinstance(ort.spatial_stages()[0].patch, TvmGraph)
    want, got = ort.exit_logits(x, batch_size=24), tvm.exit_logits(x, batch_size=24)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
    s = tvm.spatial_stages()[0]
    assert 0 < s.active < s.regions                        # the sparse path ran
    assert 0 < gated.blocks[0].skipped < len(x)            # and mixed batches


def test_aarch64_side_graphs_match_onnxruntime_under_qemu(side_bundle):
    from edgesdk.converters.tvm.emulation import check_emulated
    out = check_emulated(side_bundle, "jetson-tx2-cpu")
    assert out["passed"], out
    assert sorted(out["side_graphs"]) == sorted(
        g["file"] for e in read_bundle(side_bundle).manifest["stages"] for g in side_graphs(e))
    assert max(out["side_graphs"].values()) < 1e-4


def test_side_graphs_hold_only_operators_tensorrt_8_2_parses(side_bundle):
    import onnx
    from edgesdk.converters.tensorrt.check import graph_problems
    from edgesdk.converters.tensorrt.ops import tensorrt_ops
    bundle = read_bundle(side_bundle)
    ops = tensorrt_ops("8.2")
    for e in bundle.manifest["stages"]:
        for g in side_graphs(e):
            model = onnx.load(bundle.path(g["file"]))
            assert "NonZero" not in {n.op_type for n in model.graph.node}
            assert graph_problems(g["file"], model, ops) == []
