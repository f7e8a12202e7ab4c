"""Run aarch64 TVM builds on this x86 machine under qemu-user, to check them on the board's
instruction set without a board.

The pieces: the aarch64 TVM runtime libraries from PyPI's aarch64 wheels of the same TVM
versions the compiler is (fetched with ``pip download``), the C++ runner
(``runtime/executors/tvm_runner.cc``) cross-compiled against them, Debian's aarch64 C library as the
emulated system root, and ``qemu-aarch64``. Every stage and head runs in its own emulated
process on .npy files, chained as the runtime chains them, and every exit's logits are
compared with ONNX Runtime running the FP32 graphs natively.

``make venv`` prepares all of it (``python -m edgesdk.converters.tvm.emulation``).
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from edgesdk.errors import BuildError, MissingDependencyError
from edgesdk.runtime.executors import tvm as tvm_executor
from edgesdk.runtime.reference import read_reference

QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's libc6-arm64-cross
CROSS_CXX = "aarch64-linux-gnu-g++"
APT_PACKAGES = "qemu-user g++-aarch64-linux-gnu"
# The C++ runner ships with the executor (the device half of this backend).
RUNNER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(tvm_executor.__file__)),
                             "tvm_runner.cc")


def runtime_dir():
    """Where the aarch64 TVM runtime and runner live: ``$EDGESDK_AARCH64_TVM`` or a folder of
    the Python environment (so a fresh venv fetches its own)."""
    return os.environ.get("EDGESDK_AARCH64_TVM") or os.path.join(
        sys.prefix, "share", "edgesdk", "aarch64-tvm")


def _versions():
    from importlib.metadata import version
    return {"apache-tvm": version("apache-tvm"), "apache-tvm-ffi": version("apache-tvm-ffi")}


def _need(tool):
    if shutil.which(tool) is None:
        raise MissingDependencyError("'{}' is not installed; on Debian/Ubuntu: apt-get install {} "
                                     "(`make venv` installs it)".format(tool, APT_PACKAGES))


def prepare(dest=None, progress=print):
    """Fetch the aarch64 TVM runtime libraries and build the runner into ``dest`` (default
    :func:`runtime_dir`); does nothing when they are there for the installed TVM versions.
    Returns the runner's path."""
    dest = dest or runtime_dir()
    versions = _versions()
    stamp = os.path.join(dest, "versions.txt")
    wanted = "\n".join("{}=={}".format(k, v) for k, v in sorted(versions.items()))
    runner = os.path.join(dest, "tvm_runner")
    if os.path.exists(stamp) and open(stamp).read() == wanted and os.path.exists(runner):
        return runner
    _need(CROSS_CXX)
    _need(QEMU)
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgesdk-aarch64-") as tmp:
        progress("fetching the aarch64 wheels of " + ", ".join(wanted.split("\n")))
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "-d", tmp]
        cmd += ["{}=={}".format(k, v) for k, v in sorted(versions.items())]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode:
            raise BuildError("pip could not fetch the aarch64 TVM wheels:\n" +
                             done.stdout.decode(errors="replace")[-1500:])
        for wheel in glob.glob(os.path.join(tmp, "*.whl")):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    base = os.path.basename(name)
                    if base in ("libtvm_runtime.so", "libtvm_ffi.so"):
                        with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                            shutil.copyfileobj(src, out)
                    elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                        target = os.path.join(tmp, "include", name[len("tvm_ffi/include/"):])
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with z.open(name) as src, open(target, "wb") as out:
                            shutil.copyfileobj(src, out)
        progress("cross-compiling the TVM runner for aarch64")
        # --no-as-needed: the runner calls nothing in libtvm_runtime, but loading a Relax
        # library needs its VM loader registered, so the library must be linked in.
        compile_cmd = [CROSS_CXX, "-std=c++17", "-O2", "-I", os.path.join(tmp, "include"),
                       RUNNER_SOURCE, "-o", runner + ".tmp", "-L", dest, "-Wl,--no-as-needed",
                       "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN"]
        done = subprocess.run(compile_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode:
            raise BuildError("building the aarch64 TVM runner failed:\n" +
                             done.stdout.decode(errors="replace")[-1500:])
        os.replace(runner + ".tmp", runner)
    with open(stamp, "w") as f:
        f.write(wanted)
    return runner


def run_library(library, inputs, runner=None):
    """Run one aarch64 Relax library under qemu on a list of arrays; returns its outputs."""
    runner = runner or prepare()
    with tempfile.TemporaryDirectory(prefix="edgesdk-qemu-") as tmp:
        paths = []
        for i, a in enumerate(inputs):
            paths.append(os.path.join(tmp, "in_{}.npy".format(i)))
            np.save(paths[-1], np.ascontiguousarray(a))
        done = subprocess.run([QEMU, "-L", SYSROOT, runner, os.path.abspath(library), tmp] + paths,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode:
            raise BuildError("'{}' failed under {}: {}".format(
                library, QEMU, done.stdout.decode(errors="replace").strip()[-1500:]))
        outs = sorted(glob.glob(os.path.join(tmp, "out_*.npy")),
                      key=lambda p: int(p.rsplit("_", 1)[1][:-4]))
        return [np.load(p, allow_pickle=False) for p in outs]


def emulated_exit_logits(bundle, device, x, runner=None):
    """Every exit's logits for ``x`` with the ``device`` (e.g. ``jetson-tx2-cpu``) TVM builds,
    each graph run under qemu; batches follow each build's compiled batch size."""
    from edgesdk.manifest import graph_entries
    from edgesdk.runtime.executors.tvm import run_in_slices
    runner = runner or prepare()  # once, not per graph call
    m = bundle.manifest
    libs = {}
    for entry in graph_entries(m):
        build = next((b for b in entry.get("builds") or [] if b.get("device") == device), None)
        if build is None:
            raise BuildError("graph '{}' has no '{}' build; run edgesdk build first".format(
                entry["id"], device))
        if build["arch"] != "aarch64" or build.get("artifact") != "shared-library" \
                or build.get("processor") != "cpu":
            raise BuildError("'{}' builds are not aarch64 CPU libraries; emulation runs those "
                             "only".format(device))
        libs[entry["id"]] = (bundle.path(build["file"]), build.get("batch"))

    def run(gid, tensors):
        path, batch = libs[gid]
        return run_in_slices(lambda chunk: run_library(path, chunk, runner), tensors, batch)

    state, out = [np.ascontiguousarray(x, dtype=np.float32)], []
    for stage, head in zip(m["stages"], m["exits"]):
        state = run(stage["id"], state)
        out.append(run(head["id"], state)[0])
    return out


def check_emulated(bundle_path, device, x=None, atol=1e-4):
    """Run the bundle's ``device`` aarch64 builds under qemu on ``x`` (default: the bundle's
    reference inputs) and compare every exit with ONNX Runtime's FP32 graphs on this machine.
    Returns ``{"device", "samples", "max_abs_error" (per exit), "passed", "atol"}``."""
    from edgesdk.runtime.engine import load_bundle
    model = load_bundle(bundle_path, builds=("onnx", "fp32"))
    if x is None:
        if model.bundle.manifest.get("reference") is None:
            raise BuildError("the bundle has no reference inputs; pass inputs to check with")
        x = read_reference(model.bundle)[0]
    expected = model.exit_logits(x, adaptive=False)
    got = emulated_exit_logits(model.bundle, device, x)
    errors = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
    side = emulated_side_graphs(model, device, x)
    return {"device": device, "samples": int(len(x)), "max_abs_error": errors,
            "side_graphs": side, "atol": atol,
            "passed": max(errors + list(side.values())) <= atol}


def emulated_side_graphs(model, device, x, runner=None):
    """``{file: max abs error}`` of each side graph's ``device`` build (gates, masked blocks'
    masker and patch graphs, gated blocks) run under qemu on the inputs it gets in a run of
    ``x`` with the ONNX graphs (``model``), against ONNX Runtime's outputs there."""
    from edgesdk.manifest import side_graphs
    builds = {g["file"]: b for e in model.bundle.manifest["stages"] for g in side_graphs(e)
              for b in g.get("builds") or [] if b.get("device") == device}
    if not builds:
        return {}
    seen = {}

    class Recorder(object):   # the first call of each side graph: its inputs and outputs
        def __init__(self, graph, rel):
            self.graph, self.rel = graph, rel

        def run(self, tensors):
            out = self.graph.run(tensors)
            seen.setdefault(self.rel, ([np.array(t) for t in tensors], out))
            return out

        def __getattr__(self, name):
            return getattr(self.graph, name)
    for stage in model.stages:
        for attr in ("gate", "masker", "patch", "entry"):
            graph = getattr(stage, attr, None)
            if graph is not None and hasattr(graph, "run"):
                setattr(stage, attr, Recorder(graph, _source_file(graph)))
        for b in getattr(stage, "blocks", []):
            b.run = Recorder(b.run, _source_file(b.run))
            if b.skip is not None:
                b.skip = Recorder(b.skip, _source_file(b.skip))
    model.exit_logits(x)
    runner = runner or prepare()
    errors = {}
    for rel, (inputs, want) in seen.items():
        if rel in builds:
            from edgesdk.runtime.executors.tvm import run_in_slices
            got = run_in_slices(lambda chunk: run_library(
                model.bundle.path(builds[rel]["file"]), chunk, runner), inputs,
                builds[rel].get("batch"))
            errors[rel] = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    return errors


def _source_file(graph):
    """The manifest's file of a side graph (its ONNX source)."""
    return graph.side_graph


if __name__ == "__main__":
    print(prepare())
