"""GPU memory for the TensorRT executor: cuda-python or PyCUDA, whichever is installed.

JetPack 4.6 (CUDA 10.2) has PyCUDA; cuda-python needs CUDA 11 or newer, so desktop GPUs
usually have it. ``EDGESDK_CUDA=cuda-python|pycuda`` picks one when both are there.

:class:`DeviceArray` is a batch-major tensor in GPU memory. Stage outputs stay on the GPU as
DeviceArrays and feed the next stage directly; dropping the rows of samples that left at an
exit (``state[keep]``) copies the kept rows device to device, one copy per run of adjacent
rows. Only what the host reads (exit logits) is copied back. Every copy and every engine call
goes on one CUDA stream per process, so memory handed back to the pool can be reused at once:
work on one stream runs in order. Python 3.6 compatible.
"""
import atexit
import os

import numpy as np

from edgesdk.errors import CudaError, MissingDependencyError

_state = {"backend": None}
MIN_BLOCK = 256  # bytes; blocks are pooled by power-of-two size classes from here


class _CudaPython(object):
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6).

    Both backends' ``device()`` report the GPU's name, compute capability and the CUDA version
    its driver supports."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt
        self.rt = rt
        self.kind = rt.cudaMemcpyKind
        self._stream = self._call("cudaStreamCreate")

    def _call(self, fn, *args):
        out = getattr(self.rt, fn)(*args)
        err = out[0] if isinstance(out, tuple) else out
        if int(err) != 0:
            msg = self.rt.cudaGetErrorString(err)[1]
            raise CudaError("{} failed: {}".format(fn, msg.decode() if isinstance(msg, bytes) else msg))
        if isinstance(out, tuple) and len(out) > 1:
            return out[1] if len(out) == 2 else out[1:]
        return None

    def malloc(self, nbytes):
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr):
        self._call("cudaFree", ptr)

    def htod(self, ptr, array):
        self._call("cudaMemcpyAsync", ptr, array.ctypes.data, array.nbytes,
                   self.kind.cudaMemcpyHostToDevice, self._stream)

    def dtoh(self, array, ptr):
        self._call("cudaMemcpyAsync", array.ctypes.data, ptr, array.nbytes,
                   self.kind.cudaMemcpyDeviceToHost, self._stream)

    def dtod(self, dst, src, nbytes):
        self._call("cudaMemcpyAsync", dst, src, nbytes, self.kind.cudaMemcpyDeviceToDevice,
                   self._stream)

    def stream_handle(self):
        return int(self._stream)

    def synchronize(self):
        self._call("cudaStreamSynchronize", self._stream)

    def device(self):
        dev = self._call("cudaGetDevice")
        props = self._call("cudaGetDeviceProperties", dev)
        name = props.name.split(b"\0")[0].decode() if isinstance(props.name, bytes) else props.name
        version = self._call("cudaDriverGetVersion")
        return {"gpu": name, "compute_capability": "{}.{}".format(props.major, props.minor),
                "cuda": "{}.{}".format(version // 1000, (version % 1000) // 10)}


class _PyCuda(object):
    """PyCUDA's driver API, on the device's primary context (the one TensorRT uses)."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as drv
        drv.init()
        self.drv = drv
        self._dev = drv.Device(int(os.environ.get("EDGESDK_CUDA_DEVICE", "0")))
        self._ctx = self._dev.retain_primary_context()
        self._ctx.push()
        self._stream = drv.Stream()
        self._allocations = {}
        # PyCUDA aborts the process at exit if a context is still pushed; atexit runs this
        # before PyCUDA's own cleanup (registered earlier, run later).
        atexit.register(self.close)

    def close(self):
        """Free every allocation and pop the context (at exit)."""
        if self._ctx is None:
            return
        self._stream.synchronize()
        for alloc in self._allocations.values():
            alloc.free()
        self._allocations = {}
        self._ctx.pop()
        self._ctx = None

    def malloc(self, nbytes):
        try:
            alloc = self.drv.mem_alloc(nbytes)
        except self.drv.Error as exc:
            raise CudaError("cuMemAlloc of {} bytes failed: {}".format(nbytes, exc))
        self._allocations[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr):
        self._allocations.pop(ptr).free()

    def htod(self, ptr, array):
        self.drv.memcpy_htod_async(ptr, array, self._stream)

    def dtoh(self, array, ptr):
        self.drv.memcpy_dtoh_async(array, ptr, self._stream)

    def dtod(self, dst, src, nbytes):
        self.drv.memcpy_dtod_async(dst, src, nbytes, self._stream)

    def stream_handle(self):
        return self._stream.handle

    def synchronize(self):
        self._stream.synchronize()

    def device(self):
        major, minor = self._dev.compute_capability()
        version = self.drv.get_driver_version()
        return {"gpu": self._dev.name(), "compute_capability": "{}.{}".format(major, minor),
                "cuda": "{}.{}".format(version // 1000, (version % 1000) // 10)}


BACKENDS = (("cuda-python", _CudaPython), ("pycuda", _PyCuda))


def cuda():
    """The process's CUDA backend (created once): device memory, copies, one stream."""
    if _state["backend"] is None:
        wanted = os.environ.get("EDGESDK_CUDA")
        tried = []
        for name, cls in BACKENDS:
            if wanted and name != wanted:
                continue
            try:
                _state["backend"] = Pool(cls())
                break
            except ImportError as exc:
                tried.append("{}: {}".format(name, exc))
        if _state["backend"] is None:
            raise MissingDependencyError(
                "TensorRT engines need GPU memory through cuda-python (pip install cuda-python) "
                "or PyCUDA (JetPack: pip3 install pycuda); {}".format("; ".join(tried) or
                                                                       "EDGESDK_CUDA=" + wanted))
    return _state["backend"]


def use_backend(backend):
    """Make ``backend`` (an object with the methods of the classes above) the process's CUDA
    backend; returns the pooled backend. For tests and for embedding in an application that
    owns the CUDA context."""
    _state["backend"] = Pool(backend)
    return _state["backend"]


class Pool(object):
    """A backend with pooled allocations: freed blocks are kept by size class and reused, so a
    steady stream of batches allocates nothing after the first ones."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name
        self._free = {}
        self.allocated_bytes = 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def take(self, nbytes):
        """A block of at least ``nbytes``: ``(pointer, size class)``."""
        size = MIN_BLOCK
        while size < nbytes:
            size *= 2
        blocks = self._free.get(size)
        if blocks:
            return blocks.pop(), size
        self.allocated_bytes += size
        return self.backend.malloc(size), size

    def give(self, ptr, size):
        self._free.setdefault(size, []).append(ptr)

    def release(self):
        """Free every pooled block (at exit, or to hand memory back)."""
        self.backend.synchronize()
        for size, blocks in self._free.items():
            for ptr in blocks:
                self.backend.free(ptr)
                self.allocated_bytes -= size
        self._free = {}


class DeviceArray(object):
    """A C-contiguous tensor in GPU memory (batch first). ``len()``, ``shape``, ``dtype``;
    ``a[mask]`` / ``a[indices]`` / ``a[i:j]`` select rows (a new DeviceArray, device to
    device); ``to_host()`` or ``numpy.asarray(a)`` copies it back."""

    def __init__(self, shape, dtype, pool=None):
        self.pool = pool or cuda()
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr, self._size = self.pool.take(max(self.nbytes, 1))

    @classmethod
    def from_host(cls, array, pool=None):
        """Upload a numpy array."""
        array = np.ascontiguousarray(array)
        out = cls(array.shape, array.dtype, pool)
        if out.nbytes:
            out.pool.htod(out.ptr, array)
        return out

    def __len__(self):
        return self.shape[0]

    @property
    def row_bytes(self):
        return self.nbytes // self.shape[0] if self.shape[0] else 0

    def __getitem__(self, key):
        rows = np.arange(self.shape[0])[key]
        if rows.ndim != 1:
            raise IndexError("DeviceArray selects whole rows (a mask, indices or a slice)")
        out = DeviceArray((len(rows),) + self.shape[1:], self.dtype, self.pool)
        step = self.row_bytes
        if len(rows) and step:
            # One copy per run of adjacent rows.
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            starts = np.concatenate([[0], breaks])
            ends = np.concatenate([breaks, [len(rows)]])
            for s, e in zip(starts, ends):
                self.pool.dtod(out.ptr + int(s) * step, self.ptr + int(rows[s]) * step,
                               int(e - s) * step)
        return out

    def to_host(self):
        """A numpy copy (waits for the stream)."""
        out = np.empty(self.shape, self.dtype)
        if self.nbytes:
            self.pool.dtoh(out, self.ptr)
        self.pool.synchronize()
        return out

    def __array__(self, dtype=None):
        out = self.to_host()
        return out if dtype is None else out.astype(dtype)

    def __del__(self):
        ptr = getattr(self, "ptr", None)
        if ptr is not None:
            self.pool.give(ptr, self._size)
            self.ptr = None


def to_host(array):
    """``array`` as a numpy array: DeviceArrays are copied back, anything else passes."""
    return array.to_host() if isinstance(array, DeviceArray) else array
