"""TVM builds: host libraries match ONNX Runtime, cross-built aarch64 libraries pass the board
checks, Android archives hold aarch64 objects, and bad input fails with clear errors."""
import json
import os
import subprocess
import tarfile

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgesdk.bundle import read_bundle  # noqa: E402
from edgesdk.converters.tvm.elf_check import check_library, inspect_elf  # noqa: E402
from edgesdk.converters.tvm.build import build_tvm  # noqa: E402
from edgesdk.errors import BuildError, UnsupportedOpError  # noqa: E402
from edgesdk.runtime.engine import load_bundle  # noqa: E402
from margins import decisive, exit_thresholds  # noqa: E402


def _max_error(bundle, x, **builds):
    ref = load_bundle(bundle).exit_logits(x)
    got = load_bundle(bundle, **builds).exit_logits(x)
    return max(float(np.abs(a - b).max()) for a, b in zip(ref, got))


@pytest.fixture(scope="module")
def tvm_bundle(tmp_path_factory, bundle_master):
    """The tiny bundle with host TVM builds (batch 1) and Jetson TX2 CPU builds."""
    import shutil
    root = str(tmp_path_factory.mktemp("tvm") / "tiny.edgebundle")
    shutil.copytree(bundle_master, root)
    build_tvm(root, "host", "cpu", batch=1, progress=False)
    build_tvm(root, "jetson-tx2", "cpu", batch=1, progress=False)
    return root


def test_host_tvm_build_matches_onnxruntime_at_every_exit(tvm_bundle, mnist_split):
    _, (x, _) = mnist_split
    model = load_bundle(tvm_bundle, builds="tvm")
    assert {b["format"] for b in model.builds.values()} == {"tvm"}
    # 13 samples through batch-1 libraries: sliced calls, the results stitched back in order.
    assert _max_error(tvm_bundle, x[:13], builds="tvm") < 1e-4
    # Thresholds in gaps between the samples' scores and labels where the top two are no tie:
    # TVM and ONNX Runtime round differently (within 1e-4 of each other, checked above).
    onnx_model = load_bundle(tvm_bundle)
    thr = exit_thresholds(onnx_model, x[:64], 0.5)
    ref = onnx_model.run(x[:64], thresholds=thr)
    got = model.run(x[:64], thresholds=thr)
    assert (ref.exit_index == got.exit_index).all()
    clear = decisive(ref.probabilities)
    assert clear.mean() > 0.9 and (ref.labels == got.labels)[clear].all()


def test_symbolic_batch_build_runs_any_batch(bundle, mnist_split):
    _, (x, _) = mnist_split
    records = build_tvm(bundle, "host", "cpu", batch=None, progress=False)
    assert all(r["batch"] is None for r in records)
    assert _max_error(bundle, x[:7], builds="tvm") < 1e-4


def test_manifest_records_tvm_version_target_and_checks(tvm_bundle):
    import tvm
    m = read_bundle(tvm_bundle).manifest  # verifies every hash, the libraries included
    for entry in m["stages"] + m["exits"]:
        assert entry["format"] == "onnx"  # building adds builds; it does not select them
        tx2 = next(b for b in entry["builds"] if b.get("device") == "jetson-tx2-cpu")
        assert tx2["tvm"]["version"] == tvm.__version__
        assert tx2["tvm"]["target"]["mcpu"] == "cortex-a57"
        assert tx2["tvm"]["tuning_database_sha256"] is None
        assert tx2["elf"]["machine"] == "EM_AARCH64"
        assert tx2["elf"]["glibc"] is None or tuple(map(int, tx2["elf"]["glibc"].split("."))) <= (2, 27)
        host = next(b for b in entry["builds"] if b.get("device") == "host-cpu")
        assert host["tvm"]["target"]["mcpu"] and host["tvm"]["target"]["mtriple"]
    # aarch64 libraries are never picked on this x86 machine: the ONNX graphs run instead.
    assert all(b["device"] == "host-cpu"
               for b in load_bundle(tvm_bundle, builds="tvm").builds.values())


def test_rebuilding_replaces_the_old_builds_of_that_processor(tvm_bundle, tmp_path):
    import shutil
    root = str(tmp_path / "b.edgebundle")
    shutil.copytree(tvm_bundle, root)
    before = read_bundle(root).manifest
    build_tvm(root, "jetson-tx2", "cpu", batch=4, progress=False)
    m = read_bundle(root).manifest
    tx2 = [b for b in m["stages"][0]["builds"] if b.get("device") == "jetson-tx2-cpu"]
    assert len(tx2) == 1 and tx2[0]["batch"] == 4
    assert len(m["files"]) == len(before["files"])


def test_android_build_is_an_archive_of_aarch64_objects(bundle, tmp_path):
    records = build_tvm(bundle, "snapdragon-865-android", "cpu", progress=False)
    assert records[0]["artifact"] == "object-archive"
    with tarfile.open(os.path.join(bundle, records[0]["file"])) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert names and all(n.endswith(".o") for n in names)
    assert inspect_elf(str(tmp_path / names[0]))["machine"] == "EM_AARCH64"


def _c_library(tmp_path, compiler, body):
    src = tmp_path / "lib.c"
    src.write_text(body)
    out = tmp_path / "lib.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return str(out)


def test_a_library_needing_newer_glibc_than_the_board_is_refused(tmp_path):
    # pthread_create moved into libc as GLIBC_2.34: older than the TX2's 2.27 it is not.
    lib = _c_library(tmp_path, "aarch64-linux-gnu-gcc",
                     "#include <pthread.h>\nvoid *f(void *a) { return a; }\n"
                     "int g(void) { pthread_t t; return pthread_create(&t, 0, f, 0); }\n")
    assert inspect_elf(lib)["glibc"] == "2.34"
    with pytest.raises(BuildError, match="needs glibc 2.34 symbols; the board has glibc 2.27"):
        check_library(lib, "aarch64", "2.27")
    with pytest.raises(BuildError, match="built for EM_AARCH64, the board is x86_64"):
        check_library(lib, "x86_64")


def test_unsupported_ops_are_reported_at_once_with_their_graph(tmp_path, mnist_split):
    import torch
    from torch import nn
    from edgesdk.converters import MultiExitModel, convert
    _, (x, _) = mnist_split
    stages = [nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.CELU()),
              nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU())]
    heads = [nn.Sequential(nn.Flatten(), nn.Linear(4 * 14 * 14, 10), nn.CELU()),
             nn.Sequential(nn.Flatten(), nn.Linear(4 * 7 * 7, 10))]
    root = str(tmp_path / "celu.edgebundle")
    convert(MultiExitModel(stages, heads).eval(), torch.from_numpy(x[:2]), root, progress=False)
    with pytest.raises(UnsupportedOpError) as err:
        build_tvm(root, "host", progress=False)
    assert "2 node(s)" in str(err.value)
    assert "stage0: node" in str(err.value) and "exit0: node" in str(err.value)
    assert "(Celu)" in str(err.value)
    assert not any("tvm" in b.get("format") for b in read_bundle(root).manifest["stages"][0].get("builds") or [])


def test_missing_cross_compiler_says_how_to_install(bundle, monkeypatch):
    import shutil
    real = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **k: None if "aarch64" in name else real(name, *a, **k))
    before = sorted(os.listdir(bundle))
    with pytest.raises(BuildError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        build_tvm(bundle, "jetson-tx2", "cpu", progress=False)
    assert sorted(os.listdir(bundle)) == before  # nothing half-written
    assert not [f for f in os.listdir(os.path.dirname(bundle)) if ".tmp-" in f]


def test_a_target_dict_tvm_rejects_is_a_clear_error():
    from edgesdk.converters.tvm.build import make_target
    with pytest.raises(BuildError, match="rejects the target .*Unknown config option 'cores'"):
        make_target({"kind": "llvm", "cores": 4})
    with pytest.raises(BuildError, match="rejects the target"):
        make_target({"kind": "no-such-kind"})


def test_a_tuning_database_for_another_target_is_refused(bundle, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text("")
    record = [0, [[[], []], [1.0e-5], {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                       "mcpu": "cortex-a57", "mattr": ["+neon"]}, None]]
    (db / "database_tuning_record.json").write_text(json.dumps(record) + "\n")
    with pytest.raises(BuildError, match="tuned for .*cortex-a57.*not for this build's target"):
        build_tvm(bundle, "host", "cpu", database=str(db), progress=False)


def test_gpu_builds_carry_kernel_source_for_the_board(bundle):
    import shutil
    from edgesdk.runtime.build_select import runs_here
    tx2 = build_tvm(bundle, "jetson-tx2", "gpu", progress=False)
    adreno = build_tvm(bundle, "snapdragon-865", "gpu", progress=False)
    for r in tx2:
        assert r["kernels"]["language"] == "cuda" and r["kernels"]["arch"] == "sm_62"
        src = open(os.path.join(bundle, r["kernels"]["file"])).read()
        assert "__global__" in src
        # The library holds the same source, compiled by the board's nvcc when it loads.
        assert src[:200].encode() in open(os.path.join(bundle, r["file"]), "rb").read()
        assert r["elf"]["machine"] == "EM_AARCH64" and not runs_here(r)
    for r in adreno:
        assert r["kernels"]["language"] == "opencl"
        assert "__kernel" in open(os.path.join(bundle, r["kernels"]["file"])).read()
    nvcc = shutil.which("nvcc")
    if nvcc:  # syntax check on an architecture this nvcc still supports (13 dropped sm_62)
        out = subprocess.run([nvcc, "--ptx", "-arch=sm_75", "-o", os.devnull,
                              os.path.join(bundle, tx2[0]["kernels"]["file"])],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert out.returncode == 0, out.stdout.decode()


def test_inputs_reach_tvm_64_byte_aligned():
    from edgesdk.runtime.executors.tvm import aligned
    x = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    for part in (x[1:3], x[3:], x[[0, 4]]):   # slices starting mid-buffer, a gathered copy
        a = aligned(part)
        assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous
        assert np.array_equal(a, part) and a.dtype == part.dtype
    ok = aligned(np.empty(0, np.float32))
    assert ok.size == 0


def test_profiler_measures_the_tvm_builds_this_machine_runs(tvm_bundle):
    from edgesdk.runtime.profiler import profile_bundle
    out = profile_bundle(tvm_bundle, [1], warmup=1, repeats=3, progress=False, no_sensor=True)
    measured = {(r["graph"], r["build"]) for r in out["graphs"]}
    assert {("stage0", "tvm"), ("exit2", "tvm"), ("stage0", "onnx")} <= measured


def test_per_layer_times_of_tvm_builds_come_from_the_vm_instrumentation(tvm_bundle):
    from edgesdk.runtime.profiler import layer_rows
    model = load_bundle(tvm_bundle, builds="tvm", fallback=True)
    host = [gid for gid, b in model.builds.items() if b["format"] == "tvm"]
    rows = [r for r in layer_rows(model, 1, calls=4) if r["build"] == "tvm"]
    assert sorted({r["graph"] for r in rows}) == sorted(host) and host
    assert any("conv2d" in r["node"] for r in rows)
    assert all(r["op"] == "kernel" and not r["node"].startswith("vm.builtin.") for r in rows)
    # The hook is taken off again: a plain run still matches.
    assert len(model.run(np.zeros((1, 1, 28, 28), np.float32)).labels) == 1
