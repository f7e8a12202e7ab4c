"""Memory limits: the converter's activation estimate, and the runtime refusing a bundle or
a batch that cannot fit before it loads or runs anything."""
import io
import zipfile

import numpy as np
import pytest

from edgesdk.bundle import read_bundle, update_manifest
from edgesdk.errors import BundleError, InputError, ResourceLimitError
from edgesdk.runtime.datafiles import load_npz, read_npz
from edgesdk.runtime.engine import load_bundle
from edgesdk.onnx_scan import skeleton
from edgesdk.runtime.activation_memory import graph_activation_bytes
from edgesdk.runtime.memory import MIB, machine_memory_bytes


def _graph(nodes, outputs, initializers=(), value_info=(), output_dims=("N", 4)):
    from onnx import TensorProto, helper
    g = helper.make_graph(
        [helper.make_node(op, ins, [out]) for op, ins, out in nodes], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, output_dims) for o in outputs],
        list(initializers), value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def _expanding(dims):
    """A graph whose x (N, 4) is expanded to ``dims`` and reduced: small in, small out."""
    from onnx import numpy_helper
    shape = numpy_helper.from_array(np.array(dims, np.int64), "shape")
    return _graph([("Expand", ["x", "shape"], "big"), ("Sub", ["big", "big"], "z"),
                   ("ReduceMax", ["z"], "y")], ["y"], [shape], output_dims=None)


def _without_onnx(monkeypatch):
    """As on a board: no ONNX shape inference."""
    from edgesdk.runtime import activation_memory
    monkeypatch.setattr(activation_memory, "_INFERENCE", [None])


def test_activation_count_follows_tensor_lifetimes():
    # A chain frees each input after its reader: two 16-byte tensors alive at most.
    assert graph_activation_bytes(_graph([("Relu", ["x"], "a"), ("Relu", ["a"], "b")], ["b"])) == 32
    # A branch keeps x alive until its second reader: x, a, b together.
    branch = [("Relu", ["x"], "a"), ("Neg", ["x"], "b"), ("Add", ["a", "b"], "c")]
    assert graph_activation_bytes(_graph(branch, ["c"])) == 48


def test_activation_count_sees_what_a_graph_expands_to(monkeypatch):
    from onnx import TensorProto, helper
    bomb = _expanding([1024, 1024, 64, 4])   # 1 GiB of float32 from a 16-byte input
    assert graph_activation_bytes(bomb) >= 2 * (1 << 30)   # big and z alive together
    # Shape inference runs on a skeleton: large weights' values are never parsed.
    from onnx import numpy_helper
    weight = numpy_helper.from_array(np.ones((256, 1024), np.float32), "w")
    big = _graph([("Relu", ["x"], "a")], ["a"], [weight])
    assert len(skeleton(big)) < 1024 < len(big) and graph_activation_bytes(big) == 32
    # Without the onnx package (boards) the graph's declared shapes are what is known:
    # an intermediate it declares counts, one it hides counts as the largest known tensor.
    declared = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 1 << 20])]
    chain = _graph([("Relu", ["x"], "a"), ("Relu", ["a"], "b")], ["b"], value_info=declared)
    _without_onnx(monkeypatch)
    assert graph_activation_bytes(chain) == 16 + (4 << 20)
    assert graph_activation_bytes(bomb) == 2 * 16   # big and z, each counted as x


def test_a_manifest_understating_activations_is_checked_against_its_graphs(bundle):
    counted = load_bundle(bundle).memory.per_sample
    assert counted > 1000
    update_manifest(bundle, lambda m: m["memory"].update(activation_bytes_per_sample=1))
    model = load_bundle(bundle)
    assert model.memory.declared == 1 and model.memory.per_sample == counted
    # Room for the graphs and the claimed byte, not for one sample as the graphs count it.
    plan = model.memory
    tight = (plan.resident + plan.largest + counted // 2) / MIB
    with pytest.raises(ResourceLimitError, match="counted from its graphs; the manifest claims"):
        load_bundle(bundle, memory_limit_mb=tight)


def test_an_allocation_onnxruntime_cannot_make_is_a_resource_error(tmp_path):
    from edgesdk.runtime.executors.ort import OrtGraph
    path = tmp_path / "bomb.onnx"
    path.write_bytes(_expanding([1 << 20, 1 << 20, 1 << 10, 4]))  # 4 PiB: no machine maps it
    graph = OrtGraph(str(path), ["x"], ["y"])
    assert graph.activation_bytes > 1 << 52
    with pytest.raises(ResourceLimitError, match="onnxruntime ran out of memory"):
        graph.run([np.ones((1, 4), np.float32)])


def test_bundles_record_the_target_memory_and_activations(bundle_master, tx2_master):
    host, tx2 = (read_bundle(b).manifest["memory"] for b in (bundle_master, tx2_master))
    assert host["device_bytes"] is None and tx2["device_bytes"] == 8192 * 1024 * 1024
    # TinyNet's peak is in stage 0 (batch norm folded at export): its conv output and the
    # ReLU's, 16 channels of 14x14 float32 each, alive together.
    assert host["activation_bytes_per_sample"] == 2 * 16 * 14 * 14 * 4
    assert host["activation_bytes_per_sample"] == tx2["activation_bytes_per_sample"]


def test_a_bundle_larger_than_the_limit_is_refused_before_loading(bundle, monkeypatch):
    import edgesdk.runtime.executors.ort as ort
    monkeypatch.setattr(ort, "make_session", lambda *a: pytest.fail("a graph was loaded"))
    with pytest.raises(ResourceLimitError, match=r"needs about [\d.]+ MiB .* more than the "
                                                 r"0.0 MiB of the limit given"):
        load_bundle(bundle, memory_limit_mb=0.01)


def test_the_declared_device_memory_is_the_limit(bundle, monkeypatch):
    update_manifest(bundle, lambda m: m["memory"].update(device_bytes=20000))
    with pytest.raises(ResourceLimitError, match="of the memory of target 'host' \\(its descriptor\\)"):
        load_bundle(bundle)
    # This machine's own memory bounds it too.
    update_manifest(bundle, lambda m: m["memory"].update(device_bytes=1 << 50))
    assert load_bundle(bundle).memory.limit == machine_memory_bytes()


def test_a_batch_that_cannot_fit_is_refused_with_the_largest_that_can(bundle_master):
    model = load_bundle(bundle_master)
    plan = model.memory
    limit_mb = (plan.resident + plan.largest + 40 * plan.per_sample) / MIB
    small = load_bundle(bundle_master, memory_limit_mb=limit_mb)
    most = small.memory.max_batch()
    assert 40 <= most < 10 ** 4
    x = np.zeros((most + 1, 1, 28, 28), np.float32)
    with pytest.raises(ResourceLimitError, match="split it into batches of at most {}".format(most)):
        small.run(x)
    assert len(small.run(x[:most])) == most
    # exit_logits works in slices: a slice that fits is fine, a larger one is refused.
    assert len(small.exit_logits(x, batch_size=most)[0]) == most + 1
    with pytest.raises(ResourceLimitError):
        small.exit_logits(x, batch_size=most + 1)


def _npz_with_header(shape, payload):
    """An .npz whose array header claims ``shape`` (float32) over ``payload`` bytes."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("x.npy", buf.getvalue() + payload)
    return out.getvalue()


def test_npz_headers_are_checked_before_numpy_allocates(tmp_path):
    forged = tmp_path / "forged.npz"
    forged.write_bytes(_npz_with_header((1 << 40,), b"\0" * 16))
    with pytest.raises(InputError, match="claims 4398046511104 bytes but its member holds"):
        load_npz(str(forged))
    good = tmp_path / "good.npz"
    np.savez(str(good), x=np.zeros((100, 4), np.float32))
    assert read_npz(str(good))["x"].shape == (100, 4)
    with pytest.raises(ResourceLimitError, match="more than the 0.0 MiB allowed"):
        read_npz(str(good), max_bytes=1000)


def test_hls_output_sizes_must_match_the_manifest():
    from edgesdk.runtime.executors.fpga_csim import hls_output_sizes
    assert hls_output_sizes({"output_shapes": [[10]]}, [[None, 10]], "g") == [10]
    with pytest.raises(BundleError, match="has 1073741824 elements per sample"):
        hls_output_sizes({"output_shapes": [[1 << 30]]}, [[None, 10]], "g")


def test_steady_memory_turns_off_the_arena_for_later_sessions(bundle_master):
    from edgesdk.runtime.executors import ort
    from edgesdk.runtime.memory import steady_memory
    before = load_bundle(bundle_master).stages[0].session.get_session_options()
    try:
        assert steady_memory() is True  # glibc here
        after = load_bundle(bundle_master).stages[0].session.get_session_options()
    finally:
        ort.use_memory_arena(True)
    assert before.enable_cpu_mem_arena and not after.enable_cpu_mem_arena
    assert not after.enable_mem_pattern
