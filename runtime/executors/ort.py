"""ONNX Runtime executor.

All ONNX Runtime sessions edgesdk makes go through :func:`make_session`, so every session in a
process shares one intra-op thread pool. Why: with one pool per session, the pools of the
stages spin-wait and fight for the cores; on a 2-core x86 machine a 4-stage model ran 4.4x
slower than one monolithic session at batch 1 (measured, README). With a shared pool the
staged model costs a few percent more. ONNX Runtime allows one global pool per process and
then refuses sessions with their own pools, so a second thread count in one process runs on
the first pool. Only an onnxruntime without the call gives each session its own pool, with
spinning disabled (the next best setting measured).
"""
import re

from edgesdk.deps import require
from edgesdk.errors import BundleError, InputError, IntegrityError, ResourceLimitError
from edgesdk.runtime.executors.base import Executor
from edgesdk.onnx_scan import external_data_locations
from edgesdk.runtime.activation_memory import graph_activation_bytes
from edgesdk.runtime.cpu_features import cpu_flags
from edgesdk.verified import VerifiedFile, loadable_path, read_bytes

_pool = {"threads": None}
_arena = {"enabled": True}


def use_memory_arena(enabled):
    """Whether sessions made from now on keep ONNX Runtime's CPU memory arena (and memory
    patterns), which never gives memory back; services turn it off through
    :func:`edgesdk.runtime.memory.steady_memory` (the measurements are there)."""
    _arena["enabled"] = bool(enabled)


def _ort():
    return require("onnxruntime", "onnx", "run ONNX stages")


def _shared_pool(ort, threads):
    """Create the process-wide thread pool once; True if sessions may use it."""
    if _pool["threads"] is None:
        try:
            from onnxruntime.capi import _pybind_state
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
        except (ImportError, AttributeError, RuntimeError):
            _pool["threads"] = -1
            return False
        _pool["threads"] = threads
    return _pool["threads"] == threads


def threads_in_use(requested=None):
    """The intra-op threads sessions made now for ``requested`` threads run on: the
    process-wide pool's size once it exists (a second thread count in one process runs on
    the first pool), else ``requested`` (None: all cores)."""
    import os
    if _pool["threads"] not in (None, -1):
        return _pool["threads"]
    return int(requested or os.cpu_count() or 1)


def needs_high_precision_int8(cpuinfo="/proc/cpuinfo"):
    """Whether INT8 sessions get ONNX Runtime's ``session.x64quantprecision`` on this CPU.

    x86-64 INT8 kernels without VNNI add pairs of u8 x s8 products in 16 bits, which saturates
    with full-range 8-bit weights: a Brevitas W8A8 stage came out 0.16 off its fake
    quantization on an AVX2-only AMD EPYC, 7 logits by the last exit. The setting avoids the
    pairing. VNNI (AVX-512 VNNI, AVX-VNNI) accumulates each product in 32 bits, so there the
    setting only costs speed: a ResNet-18-sized INT8 stage took 2.9 ms with it and 0.93 ms
    without it on an Intel Xeon with AVX-512 VNNI (FP32: 2.6 ms). Other CPUs ignore it. Read
    from ``cpuinfo`` once; where the flags cannot be read, the safe setting (True).
    """
    return not cpu_flags(cpuinfo) & {"avx512_vnni", "avx_vnni"}


CPU = "CPUExecutionProvider"


def usable_providers(wanted, explicit=False):
    """The execution providers a session gets for ``wanted`` (a list, preferred first):
    those this onnxruntime has, in order, with the CPU provider last (it runs what the others
    leave). ``explicit`` (the user asked for them): each one must be available, else an
    :class:`InputError` naming those that are."""
    available = _ort().get_available_providers()
    wanted = list(wanted or [CPU])
    missing = [p for p in wanted if p not in available]
    if explicit and missing:
        raise InputError("onnxruntime {} has no {} (it has {}): install the onnxruntime build "
                         "that carries it (onnxruntime-gpu, onnxruntime-qnn, ...)".format(
                             _ort().__version__, ", ".join(missing), ", ".join(available)))
    chosen = [p for p in wanted if p in available and p != CPU]
    return chosen + [CPU]


def make_session(model, threads=None, optimize=True, providers=None, profile_prefix=None):
    """An InferenceSession for a model path or serialized bytes, on the process's shared
    thread pool where there is one (ONNX Runtime refuses per-session pools beside it).

    ``threads``: intra-op threads (default: all cores). ``optimize=False`` keeps the graph as
    it is (every intermediate tensor can then be read as an output). ``providers``: the
    execution providers, in order (:func:`usable_providers`; default the CPU's).
    ``profile_prefix``: record ONNX Runtime's per-node profile to files with this prefix.
    """
    import os
    ort = _ort()
    threads = int(threads or os.cpu_count() or 1)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize \
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    if needs_high_precision_int8():
        opts.add_session_config_entry("session.x64quantprecision", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if not _arena["enabled"]:
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    if _shared_pool(ort, threads) or _pool["threads"] != -1:
        opts.use_per_session_threads = False
    else:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=list(providers or [CPU]))

# How onnxruntime reports a failed allocation (its arena, or the system allocator).
_ALLOCATION_FAILED = ("bad_alloc", "Failed to allocate memory", "Available memory of")


class OrtGraph(Executor):
    """One stage or head graph in an ONNX Runtime session; tensors are fed by position.

    Plain ``run()`` with named outputs: on the sample (4 stages, batch 1, medians of 12 rounds)
    chained sessions cost 1.074x a monolithic session this way and 1.10x with IOBinding into
    reused buffers, whose per-call binding costs more than the allocations it saves on CPU.
    ``output_shapes`` (from the manifest) is part of every executor's signature: ONNX Runtime
    allocates outputs itself, executors that bind device buffers (TensorRT) need them.
    """

    # InferenceSession.run may be called from several threads at once (ONNX Runtime's
    # documented guarantee); other executors are serialized by the engine.
    thread_safe = True

    # For the engine and the profiler, which reach executors through the registry only.
    usable_providers = staticmethod(usable_providers)
    threads_in_use = staticmethod(threads_in_use)

    @classmethod
    def steady_memory(cls):
        """Sessions made from now on keep no CPU memory arena (:func:`use_memory_arena`)."""
        use_memory_arena(False)

    def __init__(self, path, input_names, output_names, output_shapes=None, threads=None,
                 build=None):
        model = read_bytes(path)   # checked against the manifest (IntegrityError) first
        external = sorted(set(external_data_locations(model, "'{}'".format(path))))
        # Batches are checked against this as well as the manifest's claim (EdgeModel).
        self.activation_bytes = graph_activation_bytes(model, "'{}'".format(path))
        # The build's providers: the user's (checked by the engine) or the board's preference
        # recorded at conversion, of which those this onnxruntime has.
        providers = usable_providers((build or {}).get("providers"))
        try:
            if external:
                self.session = self._with_external_data(path, external, threads, providers)
            else:
                self.session = make_session(model, threads, providers=providers)
        except IntegrityError:
            raise
        except Exception as exc:  # onnxruntime raises its own types for bad or too-new graphs
            too_new = re.search(r"opset|ir version|not (?:yet )?supported|under development",
                                str(exc), re.IGNORECASE)
            raise BundleError("onnxruntime {} cannot load '{}': {}{}".format(
                _ort().__version__, path, exc, ". If the opset is newer than this onnxruntime "
                "reads, upgrade onnxruntime or convert again with a lower --opset"
                if too_new else ""))
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != list(input_names) or got_out != list(output_names):
            raise BundleError("'{}' has inputs {} / outputs {}, the manifest says {} / {}".format(
                path, got_in, got_out, input_names, output_names))
        for o, want in zip(self.session.get_outputs(), output_shapes or []):
            got = [d if isinstance(d, int) else None for d in (o.shape or [])]
            if want is not None and (len(got) != len(want) or any(
                    g is not None and w is not None and g != w for g, w in zip(got, want))):
                raise BundleError("'{}' output '{}' has shape {}, the manifest says {} (its "
                                  "num_classes or output_shapes do not describe this "
                                  "graph)".format(path, o.name, got, want))
        self.input_names = got_in
        self.output_names = got_out
        self.providers = self.session.get_providers()   # what really runs the graph
        # InferenceSession.run checks in Python, on every call, that every input is fed, that
        # no OrtValue is borrowed and that no graph capture is active, then retries failed
        # execution providers: this executor feeds every input by name (checked above) as
        # numpy arrays on the CPU provider, so it calls the session's C++ run directly,
        # where it exists (onnxruntime >= 1.0): 25-34 us less per call for the sample's
        # batch-1 heads (57 -> 22 us for the last one; onnxruntime 1.31, loaded 2-core x86).
        self._run = getattr(self.session, "_sess", self.session).run
        self._direct = hasattr(self.session, "_sess")
        self._source = (path, threads, providers, bool(external))

    def layer_times(self, tensors, calls):
        """ONNX Runtime's own profile of a second session of this graph (the bytes checked
        again): each node's kernel time summed over ``calls`` runs."""
        import json
        import os
        import shutil
        import tempfile
        path, threads, providers, external = self._source
        if external:
            return None
        tmp = tempfile.mkdtemp(prefix="edgesdk-ort-profile-")
        try:
            session = make_session(read_bytes(path), threads, providers=providers,
                                   profile_prefix=os.path.join(tmp, "profile"))
            feed = dict(zip(self.input_names, tensors))
            for _ in range(calls):
                session.run(self.output_names, feed)
            with open(session.end_profiling()) as f:
                events = json.load(f)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        nodes = {}
        for e in events:
            name = e.get("name", "")
            if e.get("cat") == "Node" and name.endswith("_kernel_time"):
                node = nodes.setdefault(name[:-len("_kernel_time")],
                                        [(e.get("args") or {}).get("op_name", "?"), 0.0, 0])
                node[1] += e.get("dur", 0) / 1000.0
                node[2] += 1
        return [(name, op, ms, runs) for name, (op, ms, runs) in nodes.items()]

    @staticmethod
    def _with_external_data(path, names, threads, providers):
        """A session of a graph that keeps tensors in other files: only files the manifest
        lists beside it, checked, loaded from a private copy (never the paths the graph
        names, which ONNX Runtime releases resolve differently)."""
        if not isinstance(path, VerifiedFile):
            raise IntegrityError("'{}' reads external data ({}); edgesdk loads such graphs only "
                                 "from a bundle whose manifest lists those files".format(
                                     path, ", ".join(repr(n) for n in names)))
        with loadable_path(path.with_companions(names), named=True) as local:
            return make_session(local, threads, providers=providers)

    def run(self, tensors):
        """Run on a sequence of float32 arrays; returns a list of new arrays."""
        feed = dict(zip(self.input_names, tensors))
        try:
            if self._direct:
                return self._run(self.output_names, feed, None)
            return self._run(self.output_names, feed)
        except Exception as exc:
            if not any(s in str(exc) for s in _ALLOCATION_FAILED):
                raise
            raise ResourceLimitError("onnxruntime ran out of memory running a batch of {}: {}. "
                                     "Run smaller batches or give memory_limit_mb.".format(
                                         len(tensors[0]) if tensors else 0, exc))
