"""The TensorRT engine builder and executor against stand-ins of the TensorRT 8.2 and 10.x
Python APIs (tests/fake_tensorrt.py): engines registered with what built them, stage chains
that keep states in "device" memory and copy only logits back, profile slicing and padding,
and refusal of engines from another TensorRT or GPU. With ``EDGESDK_TEST_CUDA=1`` on a machine
with an NVIDIA GPU and cuda-python, the same tests run on real GPU memory."""
import os
import sys

import numpy as np
import pytest

from conftest import snapshot
from fake_tensorrt import HostMemory, fake_tensorrt
from margins import exit_thresholds

from edgesdk.bundle import read_bundle
from edgesdk.converters.tensorrt.prepare import prepare_tensorrt
from edgesdk.errors import BuildError, BundleError
from edgesdk.runtime import cuda_memory
from edgesdk.runtime.cuda_memory import DeviceArray
from edgesdk.runtime.engine import load_bundle
from edgesdk.runtime.executors import tensorrt as trt_executor
from edgesdk.runtime.executors.tensorrt_build import build_engines

REAL_CUDA = os.environ.get("EDGESDK_TEST_CUDA") == "1"


def _gpu(monkeypatch, release, version=None, memory=None):
    """Install a fake TensorRT and a CUDA backend (host memory, or the real GPU)."""
    trt = fake_tensorrt(release, version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(trt_executor._state, "runtime", None)
    monkeypatch.setitem(cuda_memory._state, "backend", None)
    if memory is not None or not REAL_CUDA:
        cuda_memory.use_backend(memory or HostMemory())
    # What tells the runtime a GPU driver is present (a file check).
    monkeypatch.setattr(trt_executor.TensorRTGraph, "device_nodes", (os.__file__,))
    return trt


@pytest.fixture(params=["8.2", "10"])
def release(request):
    return request.param


@pytest.fixture
def engines(tx2_bundle, release, monkeypatch):
    """The TX2 bundle prepared for TensorRT (profile batch 1..8) with engines built."""
    trt = _gpu(monkeypatch, release)
    target = "jetson-tx2" if release == "8.2" else "x86-nvidia"
    prepare_tensorrt(tx2_bundle, target, batch=(1, 4, 8))
    records = build_engines(tx2_bundle, workspace_mb=64, progress=False)
    return tx2_bundle, trt, records


def test_engines_are_registered_with_what_built_them(engines, release):
    path, trt, records = engines
    m = read_bundle(path).manifest  # every engine is hashed
    device = cuda_memory.cuda().device()
    for entry in [e for k in range(3) for e in (m["stages"][k], m["exits"][k])]:
        (b,) = [b for b in entry["builds"] if b["format"] == "tensorrt"]
        assert b["precision"] == "fp16" and b["artifact"] == "engine"
        assert b["built_with"]["tensorrt"] == trt.__version__
        assert b["built_with"]["gpu"] == device["gpu"]
        assert b["built_with"]["compute_capability"] == device["compute_capability"]
        assert b["profile"] == m["tensorrt"]["graphs"][entry["id"]]["profile"]
        assert entry["format"] == "onnx"  # registered, not selected
    builds = [c for c in trt.calls if c[0] == "build"]
    assert len(builds) == 6 and all(c[1] == ["FP16"] and c[2] == 64 << 20 for c in builds)


def test_tensorrt_chain_matches_onnxruntime_and_copies_only_logits_back(engines, mnist_split,
                                                                         monkeypatch):
    path, trt, _ = engines
    _, (x, _) = mnist_split
    x = x[:40]  # batch 40 > the profile's 8: runs in slices
    ref = load_bundle(path, builds=("onnx", "fp32"))
    model = load_bundle(path, builds="tensorrt")
    assert {b["format"] for b in model.builds.values()} == {"tensorrt"}
    copied = []
    to_host = DeviceArray.to_host
    monkeypatch.setattr(DeviceArray, "to_host", lambda self: copied.append(self.shape) or
                        to_host(self))
    thresholds = exit_thresholds(ref, x, 0.5)  # in gaps: engines run 8-sample slices
    got, want = model.run(x, thresholds), ref.run(x, thresholds)
    np.testing.assert_array_equal(got.exit_index, want.exit_index)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)
    assert 0 < (got.exit_index == 0).sum() < len(x)  # compaction on the device happened
    assert copied and all(s[1:] == (10,) for s in copied)  # only logits left the GPU
    executes = [c[1] for c in trt.calls if c[0] == "execute"]
    assert max(b for c in executes for b in c.values()) == 8
    for k, logits in enumerate(model.exit_logits(x[:3])):  # batch 3: one slice
        np.testing.assert_allclose(logits, ref.exit_logits(x[:3])[k], atol=1e-5)


def test_batches_below_the_profile_minimum_are_padded(tx2_bundle, mnist_split, monkeypatch):
    trt = _gpu(monkeypatch, "10")
    prepare_tensorrt(tx2_bundle, "x86-nvidia", batch=(4, 4, 4))
    build_engines(tx2_bundle, progress=False)
    _, (x, _) = mnist_split
    got = load_bundle(tx2_bundle, builds="tensorrt").exit_logits(x[:2])
    want = load_bundle(tx2_bundle, builds=("onnx", "fp32")).exit_logits(x[:2])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert {n for c in trt.calls if c[0] == "execute" for n in c[1].values()} == {4}


def test_engines_from_another_tensorrt_or_gpu_are_refused(engines, release, monkeypatch):
    path = engines[0]
    _gpu(monkeypatch, release, version="8.2.3.0" if release == "8.2" else "10.7.0.23")
    with pytest.raises(BundleError, match=r"built with TensorRT .* \(this device has .*rebuild"):
        load_bundle(path, builds="tensorrt")
    _gpu(monkeypatch, release, memory=HostMemory(gpu="NVIDIA Jetson AGX Orin",
                                                 compute_capability="8.7"))
    with pytest.raises(BundleError, match="GPU .*Orin.*compute capability .*8.7"):
        load_bundle(path, builds="tensorrt")


def test_a_failed_engine_build_leaves_the_bundle_untouched(tx2_bundle, monkeypatch):
    trt = _gpu(monkeypatch, "8.2")
    prepare_tensorrt(tx2_bundle, "jetson-tx2")
    before = snapshot(tx2_bundle)
    built = trt.Builder.build_serialized_network
    calls = []

    def third_fails(self, network, config):
        calls.append(1)
        return None if len(calls) == 3 else built(self, network, config)
    monkeypatch.setattr(trt.Builder, "build_serialized_network", third_fails)
    with pytest.raises(BuildError, match="could not build an engine from .*stage1"):
        build_engines(tx2_bundle, progress=False)
    assert snapshot(tx2_bundle) == before


def test_engines_need_a_prepared_bundle_and_tensorrt(bundle, tx2_bundle, monkeypatch):
    _gpu(monkeypatch, "8.2")
    with pytest.raises(BundleError, match="no TensorRT plan"):
        build_engines(bundle, progress=False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from edgesdk.errors import MissingDependencyError
    with pytest.raises(MissingDependencyError, match="build TensorRT engines.*JetPack"):
        build_engines(tx2_bundle, progress=False)


def test_runtime_cli_builds_engines(tx2_bundle, monkeypatch, capsys):
    from edgesdk.runtime.cli import main
    _gpu(monkeypatch, "8.2")
    prepare_tensorrt(tx2_bundle, "jetson-tx2")
    assert main(["build-engines", tx2_bundle, "--workspace-mb", "32"]) == 0
    out = capsys.readouterr().out
    assert "tensorrt/jetson-tx2-gpu/exit2.fp16.engine" in out and "8.2.1.8" in out


def test_device_arrays_select_rows_like_numpy(monkeypatch):
    _gpu(monkeypatch, "10")
    host = np.arange(7 * 3 * 2, dtype=np.float32).reshape(7, 3, 2)
    dev = DeviceArray.from_host(host)
    mask = np.array([True, True, False, True, False, False, True])
    np.testing.assert_array_equal(dev[mask].to_host(), host[mask])
    np.testing.assert_array_equal(np.asarray(dev[2:5]), host[2:5])
    np.testing.assert_array_equal(dev[np.array([6, 0, 0])].to_host(), host[[6, 0, 0]])
    assert len(dev[np.zeros(7, bool)]) == 0
    pool = cuda_memory.cuda()
    before = pool.allocated_bytes
    for _ in range(5):  # freed blocks are reused: no new allocations
        dev[mask].to_host()
    assert pool.allocated_bytes == before


def test_a_tensorrt_without_the_precision_flag_is_a_clear_error(tx2_bundle, monkeypatch):
    # TensorRT for RTX has no FP16/INT8 builder flags (strongly typed networks only); seen on
    # an H100 with tensorrt_rtx 1.7 (README).
    trt = _gpu(monkeypatch, "10")
    monkeypatch.delattr(trt.BuilderFlag, "FP16")
    prepare_tensorrt(tx2_bundle, "x86-nvidia", precision="fp16")
    with pytest.raises(BuildError, match="no FP16 builder flag"):
        build_engines(tx2_bundle, progress=False)


def test_per_layer_times_come_from_an_iprofiler_on_the_context(engines, mnist_split):
    from edgesdk.runtime.profiler import layer_rows
    path, trt, _ = engines
    model = load_bundle(path, builds="tensorrt")
    rows = layer_rows(model, 2, calls=3)
    assert sorted({r["graph"] for r in rows}) == sorted(model.builds)
    assert all(r["build"] == "tensorrt" and r["calls"] == 3 and r["mean_ms"] > 0 and
               r["share"] == 1.0 and r["node"].startswith("fake engine ") for r in rows)
    # The profiler is taken off again: later runs report nothing.
    stage = model.stages[0]
    assert getattr(stage, "graph", stage).context.profiler is None


def test_build_engines_takes_the_plans_workspace_as_trtexec_sh_does(tx2_bundle, monkeypatch):
    trt = _gpu(monkeypatch, "8.2")
    plan = prepare_tensorrt(tx2_bundle, "jetson-tx2", batch=(1, 1, 8), workspace_mb=256)
    assert all("--workspace=256" in g["trtexec"] for g in plan["graphs"].values())
    build_engines(tx2_bundle, progress=False)
    assert {c[2] for c in trt.calls if c[0] == "build"} == {256 << 20}


def test_engines_built_by_hand_are_registered_and_run(engines, tmp_path, mnist_split, capsys):
    """Engines made outside edgesdk (here: the stand-in's, as trtexec would write them) are
    checked, copied in and recorded, and then `--builds tensorrt` runs them."""
    import shutil
    from conftest import cli
    from edgesdk.runtime.executors.tensorrt_build import register_engines
    path, trt, records = engines
    made = tmp_path / "by-hand"
    made.mkdir()
    for r in records:
        shutil.copy(os.path.join(path, *r["file"].split("/")), str(made))
    fresh = str(tmp_path / "fresh.edgebundle")
    shutil.copytree(path, fresh)

    def drop_engines(m):
        for e in m["stages"] + m["exits"]:
            e["builds"] = [b for b in e["builds"] if b["format"] != "tensorrt"]
        for rel in [f for f in m["files"] if f.endswith(".engine")]:
            del m["files"][rel]
    from edgesdk import bundle as bundle_io
    bundle_io.update_manifest(fresh, drop_engines)
    with pytest.raises(Exception, match="no 'tensorrt' build"):
        load_bundle(fresh, builds="tensorrt")
    code, out, err = cli(capsys, "register-engines", fresh, str(made))
    assert code == 0, err
    m = read_bundle(fresh).manifest
    assert all(any(b["format"] == "tensorrt" for b in e["builds"]) for e in m["stages"] + m["exits"])
    assert m["provenance"]["passes"][-1]["name"] == "tensorrt-register"
    _, (x, _) = mnist_split
    np.testing.assert_allclose(load_bundle(fresh, builds="tensorrt").exit_logits(x[:4])[-1],
                               load_bundle(fresh).exit_logits(x[:4])[-1], atol=1e-2)  # fp16
    (made / os.path.basename(records[0]["file"])).write_bytes(b"not an engine")
    with pytest.raises(Exception, match="not an engine TensorRT"):
        register_engines(fresh, str(made), progress=False)
    shutil.copy(os.path.join(path, *records[0]["file"].split("/")), str(made))
    os.remove(str(made / os.path.basename(records[1]["file"])))
    code, _, err = cli(capsys, "register-engines", fresh, str(made))
    assert code == 4 and "no engine" in err
