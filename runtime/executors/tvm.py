"""TVM executor: runs a stage or head compiled by ``edgesdk build --toolchain tvm``.

Needs only TVM's runtime: the ``apache-tvm-ffi`` package and ``libtvm_runtime.so`` (found in
an installed ``tvm`` package, or named by ``EDGESDK_TVM_RUNTIME``); the compiler is never
imported. Python 3.9+ (``apache-tvm-ffi``'s floor): on a board with an older Python (JetPack
4.6 ships 3.6) run TVM builds with the C++ runner instead (``runtime/executors/tvm_runner.cc``, shipped
in the runtime .pyz: build it on the board against its TVM runtime).

Tensors go in and out through DLPack, without copies on the CPU. Libraries compiled for a
fixed batch run a larger batch in slices of that size, the last one zero-padded.

GPU builds (CUDA, OpenCL) carry their kernels as source: CUDA kernels are compiled to PTX by
the board's nvcc when the library loads, OpenCL kernels by the board's driver. They need a
TVM runtime built with that GPU backend (PyPI's aarch64 wheel has neither: name your own
build's ``libtvm_runtime.so`` in ``EDGESDK_TVM_RUNTIME``). Stage outputs come back to the
host after each GPU stage, since the exit decision and batch compaction run in numpy.
"""
import ctypes
import importlib.util
import os
import sys

import numpy as np

from edgesdk.errors import BundleError, IntegrityError, MissingDependencyError
from edgesdk.runtime.executors.base import KERNEL_NODES, Executor
from edgesdk.verified import loadable_path

# DLPack device types of the processors a TVM build may be for.
DEVICE_TYPES = {"cpu": 1, "cuda": 2, "opencl": 4}
POOLED_ALLOCATOR = 2
ALIGNMENT = 64  # bytes; TVM's kAllocAlignment
_state = {"ffi": None}


def runtime_library():
    """Path of ``libtvm_runtime.so``: ``$EDGESDK_TVM_RUNTIME`` or the installed tvm package's."""
    path = os.environ.get("EDGESDK_TVM_RUNTIME")
    if path:
        return path
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "TVM builds need TVM's runtime: pip install 'edgesdk[tvm]' (or apache-tvm-ffi plus "
            "libtvm_runtime.so named by EDGESDK_TVM_RUNTIME)")
    return os.path.join(list(spec.submodule_search_locations)[0], "lib", "libtvm_runtime.so")


def tvm_ffi():
    """The ``tvm_ffi`` module with TVM's runtime library loaded (once per process)."""
    if _state["ffi"] is None:
        try:
            import tvm_ffi as ffi
        except ImportError:
            raise MissingDependencyError("TVM builds need apache-tvm-ffi: pip install "
                                         "'edgesdk[tvm]'")
        if "tvm" not in sys.modules:  # the compiler package loads the runtime itself
            path = runtime_library()
            try:
                ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise MissingDependencyError("cannot load TVM's runtime '{}': {}".format(path, exc))
        _state["ffi"] = ffi
    return _state["ffi"]


def nvcc_compiler(arch):
    """A ``tvm_callback_cuda_compile`` that turns TVM's CUDA source into PTX for ``arch`` with
    the board's own nvcc (JetPack's CUDA 10.2 on a TX2: newer nvcc dropped sm_62)."""
    import subprocess
    import tempfile

    def compile_cuda(code, *_):
        nvcc = os.environ.get("EDGESDK_NVCC") or "nvcc"
        with tempfile.TemporaryDirectory(prefix="edgesdk-nvcc-") as d:
            src, out = os.path.join(d, "kernels.cu"), os.path.join(d, "kernels.ptx")
            with open(src, "w") as f:
                f.write(code)
            try:
                subprocess.run([nvcc, "--ptx", "-O3", "-arch=" + arch, src, "-o", out],
                               check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise BundleError("compiling the CUDA kernels for {} with '{}' failed: {}".format(
                    arch, nvcc, getattr(exc, "stdout", b"").decode(errors="replace")[-800:] or exc))
            with open(out, "rb") as f:
                return f.read()
    return compile_cuda


def _load_gpu_runtime(ffi, build):
    """Make a CUDA build loadable: TVM's CUDA runtime library, and nvcc for the kernels."""
    kernels = build.get("kernels") or {}
    if kernels.get("language") == "cuda":
        cuda = os.path.join(os.path.dirname(runtime_library()), "libtvm_runtime_cuda.so")
        if os.path.exists(cuda):
            ctypes.CDLL(cuda, ctypes.RTLD_GLOBAL)
        ffi.register_global_func("tvm_callback_cuda_compile",
                                 nvcc_compiler(kernels.get("arch") or "sm_62"), override=True)


def set_threads(threads):
    """Size TVM's CPU thread pool (all cores when None)."""
    ffi = tvm_ffi()
    config = ffi.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None and threads:
        config(1, int(threads))  # 1: big cores first


def aligned(array, alignment=ALIGNMENT):
    """``array`` as a C-contiguous array whose data starts on an ``alignment``-byte boundary
    (copied only when it does not already). TVM's generated code assumes its buffers are
    64-byte aligned: tuned kernels use aligned vector loads, and a numpy slice that starts
    mid-row crashed them (segfault in TVMBackendParallelLaunch, measured here)."""
    array = np.ascontiguousarray(array)
    if array.ctypes.data % alignment == 0:
        return array
    raw = np.empty(array.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


class TvmGraph(Executor):
    """One stage or head as a Relax VM library; tensors are fed by position."""

    @classmethod
    def device_nodes_for(cls, build):
        """A GPU build needs the driver of its kernels' language (CUDA or OpenCL)."""
        language = (build.get("kernels") or {}).get("language")
        return language, KERNEL_NODES.get(language, ())

    def __init__(self, path, input_names, output_names, output_shapes=None, threads=None,
                 build=None):
        build = build or {}
        if build.get("artifact", "shared-library") != "shared-library":
            raise BundleError("'{}' is an object-file archive: link it into a shared library "
                              "first (see the build's device_build note)".format(path))
        kind = "cpu" if build.get("processor", "cpu") == "cpu" else \
            (build.get("kernels") or {}).get("language", "cuda")
        ffi = tvm_ffi()
        set_threads(threads)
        if kind != "cpu":
            _load_gpu_runtime(ffi, build)
        try:
            with loadable_path(path, named=True) as local:   # TVM goes by the file's suffix
                lib = ffi.load_module(local)
            self.vm = lib["vm_load_executable"]()
        except IntegrityError:     # the file changed after the bundle was opened
            raise
        except Exception as exc:  # TVM raises RuntimeError/TVMError for foreign or broken files
            raise BundleError("TVM's runtime cannot load '{}': {}. Is it built for this machine "
                              "({})?".format(path, str(exc).strip().splitlines()[-1],
                                             os.uname().machine))
        self.device = (DEVICE_TYPES[kind], 0)
        init = [DEVICE_TYPES[kind], 0, POOLED_ALLOCATOR]
        if kind != "cpu":
            init += [DEVICE_TYPES["cpu"], 0, POOLED_ALLOCATOR]  # shape functions run on the CPU
        self.vm["vm_initialization"](*init)
        self._main = self.vm["main"]
        self._lib = lib  # the executable's code lives in the library; keep it loaded
        self.batch = build.get("batch")
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def _call(self, tensors):
        ffi = _state["ffi"]
        out = self._main(*[ffi.from_dlpack(aligned(t)) for t in tensors])
        outs = list(out) if isinstance(out, ffi.Array) else [out]
        # Zero-copy views: each holds a reference to its TVM tensor, so the VM cannot reuse
        # the memory while the array lives.
        return [np.from_dlpack(o) for o in outs]

    def run(self, tensors):
        """Run on a sequence of float32 arrays; returns a list of new arrays."""
        return run_in_slices(self._call, tensors, self.batch)

    def layer_times(self, tensors, calls):
        """Each compiled kernel's wall time, summed over ``calls`` runs, from the Relax VM's
        instrumentation hook (called before and after every packed function; the VM's own
        builtins, allocation and shape checks, are left out). The hook's Python call adds a
        few microseconds to each kernel."""
        import time
        clock, started, kernels = time.perf_counter, [], {}

        def instrument(func, name, before_run, ret_value, *args):
            if before_run:
                started.append(clock())
            else:
                t = kernels.setdefault(str(name), [0.0, 0])
                t[0] += (clock() - started.pop()) * 1000.0
                t[1] += 1
            return 0
        self.vm["set_instrument"](instrument)
        try:
            for _ in range(calls):
                self.run(tensors)
        finally:
            self.vm["set_instrument"](None)
        return [(name, "kernel", ms, runs) for name, (ms, runs) in kernels.items()
                if not name.startswith("vm.builtin.")]


def run_in_slices(call, tensors, batch):
    """``call(tensors)`` for a graph compiled for a fixed ``batch`` (None: any), over inputs of
    any batch: slices of ``batch`` samples, the last zero-padded, outputs stitched back."""
    n = len(tensors[0])
    if batch is None or n == batch:
        return call(tensors)
    parts = []
    for i in range(0, n, batch):
        chunk = [t[i:i + batch] for t in tensors]
        short = batch - len(chunk[0])
        if short:
            chunk = [np.concatenate([c, np.zeros((short,) + c.shape[1:], c.dtype)]) for c in chunk]
        parts.append([o[:batch - short] for o in call(chunk)])
    return [np.concatenate(p) for p in zip(*parts)]
