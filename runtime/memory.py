"""Memory limits: refuse a bundle or a batch that cannot fit before loading or running it.

The limit is the smaller of the board's memory as the target descriptor declares it (the
manifest's ``memory.device_bytes``) and this machine's own (``MemTotal``), or what the user
passes. A bundle needs its graph files once loaded, plus a second copy of the largest one
while it loads (ONNX Runtime parses a graph before it builds the session: measured 2.0x a
195 MB graph at the peak, 1.04x after); a batch needs ``activation_bytes_per_sample`` (the
converter's liveness estimate) per sample on top. Numbers read from a manifest are only
compared, never allocated. Python 3.6 compatible.
"""
from edgesdk.errors import ResourceLimitError
from edgesdk.manifest import graph_entries, side_graphs

MIB = float(1 << 20)


def machine_memory_bytes(meminfo="/proc/meminfo"):
    """This machine's RAM (``MemTotal``), or None where the kernel does not say."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mb(n):
    return "{:,.1f} MiB".format(n / MIB)


class MemoryPlan(object):
    """What a loaded bundle may use: ``limit`` bytes, ``resident`` bytes for its graphs and
    ``per_sample`` bytes of activations per sample in a batch."""

    def __init__(self, limit, source, resident, largest, per_sample):
        self.limit, self.source = limit, source
        self.resident, self.largest, self.per_sample = resident, largest, per_sample
        self.declared = per_sample   # the manifest's figure

    def use_graph_counts(self, counts):
        """Take the largest of the manifest's figure and ``counts`` (per-sample activation
        bytes recomputed from each loaded graph; None where a format cannot be read) as the
        bytes each sample needs."""
        self.per_sample = max([self.declared] + [c for c in counts if c is not None])

    @classmethod
    def for_bundle(cls, bundle, files, limit_mb=None):
        """The plan for loading ``files`` (bundle-relative graph files) of ``bundle``;
        ``limit_mb`` overrides the declared and measured memory."""
        memory = bundle.manifest.get("memory") or {}
        sizes = [bundle.manifest["files"][rel]["bytes"] for rel in files]
        if limit_mb is not None:
            if isinstance(limit_mb, bool) or not isinstance(limit_mb, (int, float)) or \
                    not 0 < limit_mb < float("inf"):
                raise ResourceLimitError("memory_limit_mb must be a positive, finite number, "
                                         "got {!r}".format(limit_mb))
            limit, source = int(limit_mb * MIB), "the limit given"
        else:
            known = [(memory.get("device_bytes"), "the memory of target '{}' (its descriptor)"
                      .format(bundle.manifest["target"])),
                     (machine_memory_bytes(), "this machine's memory")]
            known = [k for k in known if k[0]]
            limit, source = min(known) if known else (None, "unknown")
        return cls(limit, source, sum(sizes), max(sizes) if sizes else 0,
                   memory.get("activation_bytes_per_sample", 0))

    def check_load(self, rows=1):
        """Refuse loading when the graphs and a batch of ``rows`` cannot fit."""
        need = self.resident + self.largest + rows * self.per_sample
        if self.limit is not None and need > self.limit:
            raise ResourceLimitError(
                "this bundle needs about {} to load and run ({} of graph files, {} while the "
                "largest loads, {} of activations for a batch of {}{}), more than the {} of {}. "
                "Use a smaller model or precision, or a board with more memory.".format(
                    _mb(need), _mb(self.resident), _mb(self.largest),
                    _mb(rows * self.per_sample), rows, self._why(), _mb(self.limit),
                    self.source))

    def max_batch(self):
        """The largest batch that fits beside the loaded graphs (None: no limit known)."""
        if self.limit is None or not self.per_sample:
            return None
        return max(0, (self.limit - self.resident) // self.per_sample)

    def check_batch(self, n):
        """Refuse a batch of ``n`` samples whose activations cannot fit."""
        most = self.max_batch()
        if most is not None and n > most:
            raise ResourceLimitError(
                "a batch of {} needs about {} of activations ({} per sample{}) beside {} of "
                "graphs, more than the {} of {}: split it into batches of at most {}".format(
                    n, _mb(n * self.per_sample), _mb(self.per_sample), self._why(),
                    _mb(self.resident), _mb(self.limit), self.source, most))

    def _why(self):
        if self.per_sample == self.declared:
            return ""
        return ", counted from its graphs; the manifest claims {}".format(_mb(self.declared))


def files_to_load(manifest, builds):
    """Bundle-relative files the engine loads: each graph's chosen build (``builds``: graph id
    -> build record), and the gates, width variants and learned routers of adaptive stages."""
    return [builds[e["id"]]["file"] for e in graph_entries(manifest)] + adaptive_files(manifest)


def adaptive_files(manifest):
    """The ONNX files of the stages' gates, width variants, learned routers, spatial (masker
    and patch) graphs and gated blocks (their TVM builds are not counted: an estimate)."""
    return [g["file"] for stage in manifest["stages"] for g in side_graphs(stage, dropped=False)]


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def steady_memory(mmap_threshold=128 * 1024):
    """For long-running services: call once before loading bundles so resident memory
    follows the live tensors instead of the largest batch ever run.

    - Every executor is told (:meth:`~.executors.base.Executor.steady_memory`): ONNX Runtime
      sessions made afterwards keep no CPU memory arena (it never gives memory back).
    - On glibc, allocations of ``mmap_threshold`` bytes or more (batched activations) get
      their own pages, returned when freed: glibc otherwise raises this threshold each time
      such a block is freed, and batch-sized arrays then come from per-thread heaps that
      grow in steps when several threads call one model (the same as setting
      ``MALLOC_MMAP_THRESHOLD_`` in the environment).

    Measured with ``benchmarks/soak.py`` (2 threads, 100,000 inferences): without it 733 MB
    resident after the sample's calibration, growing 9.6-14 MB; with it 345 MB, +0.3 MB; the
    sample's batch-1 and batch-64 calls took 0.98x and 1.02x the time without the arena.
    Returns whether glibc took the threshold.
    """
    from edgesdk.runtime.executors import EXECUTORS
    for name in EXECUTORS.names():
        EXECUTORS.get(name).steady_memory()
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
