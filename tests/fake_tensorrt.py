"""Stand-ins for TensorRT and for GPU memory, so edgesdk's TensorRT code runs on a CPU machine.

``fake_tensorrt("8.2")`` / ``fake_tensorrt("10")`` return a module with the parts of the
TensorRT Python API that edgesdk calls, as NVIDIA documents them for that release: 8.2 has
bindings by index (``num_bindings``, ``binding_is_input``, ``set_binding_shape``,
``execute_async_v2``) and ``max_workspace_size``; 10.x has only named I/O tensors
(``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and
``set_memory_pool_limit``. A method the release lacks is absent, so calling it fails.

The "engine" a fake builder serializes is a JSON header (release, flags, profile) and the
ONNX graph; a fake engine executes it with ONNX Runtime in float32, reading and writing the
buffers whose addresses it is given through the process's CUDA backend: host memory
(:class:`HostMemory`) here, real GPU memory when the tests run on a GPU machine.
"""
import ctypes
import json
import time
import types

import numpy as np

MAGIC = b"FAKE-TRT\n"


class HostMemory(object):
    """A CUDA backend whose "device" memory is host memory."""

    name = "host-memory"

    def __init__(self, gpu="Fake GPU", compute_capability="6.2"):
        self.blocks = {}
        self.info = {"gpu": gpu, "compute_capability": compute_capability, "cuda": "10.2"}

    def malloc(self, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.blocks[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free(self, ptr):
        del self.blocks[ptr]

    def htod(self, ptr, array):
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def dtoh(self, array, ptr):
        ctypes.memmove(array.ctypes.data, ptr, array.nbytes)

    def dtod(self, dst, src, nbytes):
        ctypes.memmove(dst, src, nbytes)

    def stream_handle(self):
        return 0

    def synchronize(self):
        pass

    def device(self):
        return dict(self.info)


def fake_tensorrt(release="8.2", version=None, memory=None):
    """A module standing in for ``tensorrt`` of ``release`` (``8.2`` or ``10``).
    ``memory``: a callable returning the CUDA backend engines read buffers through (default:
    edgesdk's)."""
    import onnx
    from edgesdk.runtime.cuda_memory import cuda
    from edgesdk.runtime.executors.ort import make_session
    memory = memory or cuda
    legacy = release == "8.2"
    version = version or ("8.2.1.8" if legacy else "10.3.0.26")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []

    class Logger(object):
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class NetworkDefinitionCreationFlag(object):
        EXPLICIT_BATCH = 0

    class BuilderFlag(object):
        FP16 = "FP16"
        INT8 = "INT8"

    class DataType(object):
        FLOAT = "FLOAT"

    trt.Logger, trt.BuilderFlag, trt.DataType = Logger, BuilderFlag, DataType
    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.nptype = lambda dt: {"FLOAT": np.float32}[dt]

    class Input(object):
        def __init__(self, name):
            self.name = name

    class Network(object):
        def __init__(self, flags):
            self.flags = flags
            self.onnx = None
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return Input(self.inputs[i])

    class Error(object):
        def __init__(self, desc):
            self._desc = desc

        def desc(self):
            return self._desc

        def __str__(self):
            return self._desc

    class OnnxParser(object):
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        def parse(self, data):
            model = onnx.load_from_string(data)
            opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            if legacy and opset > 13:
                self.errors.append(Error("Unsupported ONNX opset {}".format(opset)))
                return False
            inits = {t.name for t in model.graph.initializer}
            self.network.inputs = [i.name for i in model.graph.input if i.name not in inits]
            self.network.onnx = data
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile(object):
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config(object):
        def __init__(self):
            self.flags, self.profiles = [], []
            self.max_workspace_size = 0

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    if not legacy:
        class MemoryPoolType(object):
            WORKSPACE = "WORKSPACE"

        def set_memory_pool_limit(self, pool, size):
            self.max_workspace_size = size
        Config.set_memory_pool_limit = set_memory_pool_limit
        trt.MemoryPoolType = MemoryPoolType

    class Builder(object):
        def __init__(self, logger):
            self.platform_has_fast_fp16 = True

        def create_network(self, flags):
            if legacy and not flags & 1:
                raise RuntimeError("TensorRT 8.2 parses ONNX into explicit-batch networks only")
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build", sorted(config.flags), config.max_workspace_size))
            head = {"version": version, "flags": sorted(config.flags),
                    "profile": config.profiles[0].shapes}
            return MAGIC + json.dumps(head).encode() + b"\n" + network.onnx

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    class Engine(object):
        def __init__(self, head, model_bytes):
            model = onnx.load_from_string(model_bytes)
            inits = {t.name for t in model.graph.initializer}
            self.inputs = [i.name for i in model.graph.input if i.name not in inits]
            self.outputs = [o.name for o in model.graph.output]
            self.names = self.inputs + self.outputs
            self.profile = head["profile"]
            self.session = make_session(model_bytes)

        def create_execution_context(self):
            return Context(self)

    class IProfiler(object):
        def report_layer_time(self, layer_name, ms):
            raise NotImplementedError
    trt.IProfiler = IProfiler

    class Context(object):
        def __init__(self, engine):
            self.engine = engine
            self.shapes = {}
            self.addresses = {}
            self.profiler = None

        def _set(self, name, shape):
            lo, _, hi = self.engine.profile[name]
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def _output_shapes(self):
            n = self.shapes[self.engine.inputs[0]][0]
            feeds = {k: np.zeros(s, np.float32) for k, s in self.shapes.items()}
            outs = self.engine.session.run(None, feeds)
            return dict((k, (n,) + o.shape[1:]) for k, o in zip(self.engine.outputs, outs))

        def _execute(self, addresses):
            mem = memory()  # the CUDA backend: the "kernels" read and write through it
            mem.synchronize()
            feeds = {}
            for name in self.engine.inputs:
                feeds[name] = np.empty(self.shapes[name], np.float32)
                mem.dtoh(feeds[name], addresses[name])
            mem.synchronize()
            start = time.perf_counter()
            for name, out in zip(self.engine.outputs, self.engine.session.run(None, feeds)):
                mem.htod(addresses[name], np.ascontiguousarray(out, np.float32))
            mem.synchronize()
            if self.profiler is not None:   # one "layer": the whole stand-in engine
                self.profiler.report_layer_time("fake engine " + "+".join(self.engine.outputs),
                                                (time.perf_counter() - start) * 1000.0)
            trt.calls.append(("execute", dict((k, v[0]) for k, v in self.shapes.items())))
            return True

    if legacy:
        def num_bindings(self):
            return len(self.names)
        Engine.num_bindings = property(num_bindings)
        Engine.get_binding_name = lambda self, i: self.names[i]
        Engine.binding_is_input = lambda self, i: i < len(self.inputs)
        Engine.get_binding_dtype = lambda self, i: "FLOAT"
        Engine.get_profile_shape = lambda self, p, i: [tuple(s) for s in
                                                       self.profile[self.names[i]]]
        Context.set_binding_shape = lambda self, i, shape: self._set(self.engine.names[i], shape)
        Context.get_binding_shape = lambda self, i: self._output_shapes()[self.engine.names[i]]

        def execute_async_v2(self, bindings, stream):
            return self._execute(dict(zip(self.engine.names, bindings)))
        Context.execute_async_v2 = execute_async_v2
    else:
        class TensorIOMode(object):
            INPUT, OUTPUT = "INPUT", "OUTPUT"
        trt.TensorIOMode = TensorIOMode

        def num_io_tensors(self):
            return len(self.names)
        Engine.num_io_tensors = property(num_io_tensors)
        Engine.get_tensor_name = lambda self, i: self.names[i]
        Engine.get_tensor_mode = lambda self, n: "INPUT" if n in self.inputs else "OUTPUT"
        Engine.get_tensor_dtype = lambda self, n: "FLOAT"
        Engine.get_tensor_profile_shape = lambda self, n, p: [tuple(s) for s in self.profile[n]]
        Context.set_input_shape = lambda self, n, shape: self._set(n, shape)
        Context.get_tensor_shape = lambda self, n: self._output_shapes()[n]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
        Context.set_tensor_address = set_tensor_address
        Context.execute_async_v3 = lambda self, stream: self._execute(self.addresses)

    class Runtime(object):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if not data.startswith(MAGIC):
                return None
            head, _, body = data[len(MAGIC):].partition(b"\n")
            head = json.loads(head.decode())
            if head["version"] != version:  # TensorRT logs the mismatch and returns None
                return None
            return Engine(head, body)

    trt.Runtime = Runtime
    return trt
