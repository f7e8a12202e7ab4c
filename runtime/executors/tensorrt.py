"""TensorRT executor: runs a stage or head engine built on this device
(``edgesdk build --toolchain tensorrt --on-device``, or the runtime's ``build-engines``).

Two APIs, chosen by what the installed ``tensorrt`` offers:

* TensorRT 8.x (JetPack 4.6 has 8.2): bindings by index (``num_bindings``,
  ``binding_is_input``, ``set_binding_shape``) and ``execute_async_v2(bindings, stream)``.
* TensorRT 8.5+ and 10.x: named I/O tensors (``num_io_tensors``, ``set_input_shape``,
  ``set_tensor_address``) and ``execute_async_v3(stream)``; 10.x has only these.

Inputs may be numpy arrays (uploaded) or :class:`~edgesdk.runtime.cuda_memory.DeviceArray`
(a previous stage's output, used in place); outputs are DeviceArrays, so states stay on the
GPU between stages and only exit logits are copied back (the engine does that for heads).
Batches larger than the engine's optimization profile allows run in slices written straight
into one output buffer; smaller ones are padded. Every call ends with a stream synchronisation, so the host-side
timings of the profiler measure the GPU work. Python 3.6 compatible.
"""
import logging

import numpy as np

from edgesdk.errors import BundleError, InputError, MissingDependencyError
from edgesdk.runtime.cuda_memory import DeviceArray, cuda, to_host
from edgesdk.runtime.executors.base import CUDA_NODES, Executor
from edgesdk.verified import read_bytes

log = logging.getLogger(__name__)
_state = {"runtime": None, "logger": None}


def tensorrt(purpose="run TensorRT engines"):
    """The ``tensorrt`` module (JetPack's, or pip's ``tensorrt`` on a GPU host)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError(
            "TensorRT's Python package is needed to {} but cannot be imported ({}). On a "
            "Jetson it comes with JetPack (apt install python3-libnvinfer); on an x86-64 GPU "
            "machine: pip install tensorrt cuda-python".format(purpose, exc))
    return trt


def trt_runtime(trt):
    """The process's one TensorRT runtime (engines deserialize through it)."""
    if _state["runtime"] is None:
        _state["logger"] = trt.Logger(trt.Logger.WARNING)
        _state["runtime"] = trt.Runtime(_state["logger"])
    return _state["runtime"]


def rebuild_hint():
    """What to do about an engine this device cannot use."""
    return ("rebuild the engines on this device: edgesdk build BUNDLE --toolchain tensorrt "
            "--on-device (or, without the host SDK: python3 edgesdk-runtime.pyz build-engines "
            "BUNDLE)")


def check_built_with(path, recorded, trt_version, device):
    """Refuse an engine built by another TensorRT version or on another GPU: TensorRT plans
    are specific to both (the deserializer fails or, across GPUs of one architecture, runs
    with kernels tuned for the wrong chip)."""
    if not recorded:
        raise BundleError("the manifest does not say what built '{}'; {}".format(
            path, rebuild_hint()))
    wrong = []
    if recorded.get("tensorrt") != trt_version:
        wrong.append("TensorRT {} (this device has {})".format(recorded.get("tensorrt"),
                                                                trt_version))
    for key, what in (("gpu", "GPU"), ("compute_capability", "compute capability")):
        if recorded.get(key) != device.get(key):
            wrong.append("{} {} (this device has {})".format(what, recorded.get(key),
                                                             device.get(key)))
    if wrong:
        raise BundleError("engine '{}' was built with {}; {}".format(path, ", ".join(wrong),
                                                                       rebuild_hint()))


class _TensorAPI(object):
    """TensorRT 8.5+ / 10.x: named I/O tensors and ``execute_async_v3``."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names
                       if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]

    def dtype(self, name):
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def profile(self, name):
        return self.engine.get_tensor_profile_shape(name, 0)

    def set_shape(self, name, shape):
        return self.context.set_input_shape(name, shape)

    def execute(self, pointers, stream):
        for name, ptr in pointers.items():
            self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(stream):
            raise BundleError("TensorRT's execute_async_v3 failed (see its log above)")

    def output_shape(self, name):
        return tuple(self.context.get_tensor_shape(name))


class _BindingAPI(object):
    """TensorRT 8.x before 8.5 (the TX2's 8.2): bindings by index and ``execute_async_v2``."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        self.index = dict((n, i) for i, n in enumerate(self.names))
        self.inputs = [n for i, n in enumerate(self.names) if engine.binding_is_input(i)]
        self.outputs = [n for n in self.names if n not in self.inputs]

    def dtype(self, name):
        return np.dtype(self.trt.nptype(self.engine.get_binding_dtype(self.index[name])))

    def profile(self, name):
        return self.engine.get_profile_shape(0, self.index[name])

    def set_shape(self, name, shape):
        return self.context.set_binding_shape(self.index[name], shape)

    def execute(self, pointers, stream):
        bindings = [int(pointers[n]) for n in self.names]
        if not self.context.execute_async_v2(bindings, stream):
            raise BundleError("TensorRT's execute_async_v2 failed (see its log above)")

    def output_shape(self, name):
        return tuple(self.context.get_binding_shape(self.index[name]))


class TensorRTGraph(Executor):
    """One stage or head engine; tensors by position, as the manifest lists them."""

    device_arrays = True  # outputs are DeviceArrays (the engine copies head outputs back)
    device_kind, device_nodes = "cuda", CUDA_NODES
    to_host = staticmethod(to_host)

    def __init__(self, path, input_names, output_names, output_shapes=None, threads=None,
                 build=None):
        trt = tensorrt()
        self.pool = cuda()
        check_built_with(path, (build or {}).get("built_with"), trt.__version__,
                         self.pool.device())
        plan = read_bytes(path)
        engine = trt_runtime(trt).deserialize_cuda_engine(plan)
        if engine is None:
            raise BundleError("TensorRT {} could not deserialize '{}'; {}".format(
                trt.__version__, path, rebuild_hint()))
        self.engine = engine
        self.context = engine.create_execution_context()
        api = _TensorAPI if hasattr(engine, "num_io_tensors") else _BindingAPI
        self.api = api(trt, engine, self.context)
        if self.api.inputs != list(input_names) or self.api.outputs != list(output_names):
            raise BundleError("'{}' has inputs {} / outputs {}, the manifest says {} / {}".format(
                path, self.api.inputs, self.api.outputs, list(input_names), list(output_names)))
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.dtypes = dict((n, self.api.dtype(n)) for n in self.api.names)
        # The batch range of optimization profile 0 (every input shares the batch dim).
        lows, highs = zip(*[(p[0][0], p[2][0]) for p in
                            (self.api.profile(n) for n in self.input_names)])
        self.min_batch, self.max_batch = max(lows), min(highs)

    def _device_input(self, array, name):
        if isinstance(array, DeviceArray):
            if array.dtype != self.dtypes[name]:
                raise InputError("input '{}' is {} on the GPU; the engine takes {}".format(
                    name, array.dtype, self.dtypes[name]))
            return array
        return DeviceArray.from_host(np.asarray(array, dtype=self.dtypes[name]), self.pool)

    def layer_times(self, tensors, calls):
        """TensorRT's per-layer times (an ``IProfiler`` on the execution context, as
        ``trtexec --dumpProfile`` uses), summed over ``calls`` runs."""
        trt, layers = tensorrt(), {}

        class Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name, ms):
                t = layers.setdefault(str(layer_name), [0.0, 0])
                t[0] += float(ms)
                t[1] += 1
        self.context.profiler = Profiler()
        try:
            for _ in range(calls):
                self.run(tensors)
        finally:
            try:
                self.context.profiler = None
            except TypeError:   # a release that takes no None: the profiler stays, unused
                pass
        return [(name, "layer", ms, runs) for name, (ms, runs) in layers.items()]

    def run(self, tensors):
        """Run on a sequence of arrays (numpy or DeviceArray); returns DeviceArrays."""
        ins = [self._device_input(a, n) for a, n in zip(tensors, self.input_names)]
        n = len(ins[0])
        if n < self.min_batch:
            # Below the profile's minimum (a batch shrunk by early exits): repeat row 0.
            fill = np.concatenate([np.arange(n), np.zeros(self.min_batch - n, dtype=np.int64)])
            return [o[:n] for o in self.run([a[fill] for a in ins])]
        outs = None
        for start in range(0, n, self.max_batch):
            rows = min(self.max_batch, n - start)
            if 0 < rows < self.min_batch:  # a short last slice: rerun the rows before it
                start, rows = n - self.min_batch, self.min_batch
            pointers = {}
            for name, a in zip(self.input_names, ins):
                shape = (rows,) + a.shape[1:]
                if not self.api.set_shape(name, shape):
                    raise InputError("TensorRT refused shape {} for input '{}'".format(
                        list(shape), name))
                pointers[name] = a.ptr + start * a.row_bytes
            # Output shapes are known once the input shapes are set.
            if outs is None:
                outs = [DeviceArray((n,) + self.api.output_shape(o)[1:], self.dtypes[o], self.pool)
                        for o in self.output_names]
            for name, a in zip(self.output_names, outs):
                pointers[name] = a.ptr + start * a.row_bytes
            self.api.execute(pointers, self.pool.stream_handle())
        self.pool.synchronize()
        return outs
