"""The device-side engine: run a bundle stage by stage and stop at the first confident exit.

Samples that exit leave the batch (compaction); later stages run on the rest only. Heads of
exits without a threshold are not run at all. Python 3.6 / numpy 1.19 compatible.
"""
import collections
import threading
import time

import numpy as np

from edgesdk.bundle import read_bundle
from edgesdk.errors import InputError
from edgesdk.manifest import graph_entries
from edgesdk.runtime.build_select import pick_build, ran
from edgesdk.runtime.executors import EXECUTORS
from edgesdk.runtime.input_stats import InputGuard
from edgesdk.runtime.inputs import check_batch
from edgesdk.runtime.memory import MemoryPlan, files_to_load
from edgesdk.runtime.policies import get_policy, softmax
from edgesdk.verified import VerifiedFile

count_nonzero = np.count_nonzero
isfinite = np.isfinite

SampleResult = collections.namedtuple(
    "SampleResult", ["label", "probabilities", "exit_index", "stage_ms"])


class RunResult(object):
    """Per-sample results of one batched call.

    Attributes: ``labels`` (N,), ``probabilities`` (N, C), ``exit_index`` (N,), ``stage_ms``
    (N, stages): the wall time of each stage call (stage + its head) shared equally by the
    samples in that call, NaN for stages a sample did not reach; ``total_ms``: the whole call;
    ``notes``: what a deadline or budget did (empty when nothing was cut short); ``builds``:
    ``{graph id: {"format", "precision", "processor", "device", "file"}}``, the build each
    graph ran with.
    """

    def __init__(self, labels, probabilities, exit_index, stage_ms, total_ms, notes=(),
                 builds=None):
        self.builds = builds
        self.labels = labels
        self.probabilities = probabilities
        self.exit_index = exit_index
        self.stage_ms = stage_ms
        self.total_ms = total_ms
        self.notes = list(notes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return SampleResult(int(self.labels[i]), self.probabilities[i], int(self.exit_index[i]),
                            self.stage_ms[i])

    def exit_counts(self):
        """Number of samples that stopped at each exit."""
        return np.bincount(self.exit_index, minlength=self.stage_ms.shape[1])


def stage_ms_table(timeline, n, num_exits):
    """Per-sample milliseconds of each stage call: ``timeline`` holds ``(rows, seconds)`` per
    call (``rows`` None: the whole batch), shared equally by the rows in the call."""
    if all(rows is None for rows, _ in timeline):
        # No sample left early (always so at batch 1): the table from one list, about half
        # the cost of filling a NaN table column by column.
        row = [seconds * 1000.0 / n for _, seconds in timeline]
        row += [np.nan] * (num_exits - len(row))
        return np.array(row * n, dtype=np.float64).reshape(n, num_exits)
    stage_ms = np.full((n, num_exits), np.nan)
    for k, (rows, seconds) in enumerate(timeline):
        if rows is None:
            stage_ms[:, k] = seconds * 1000.0 / n
        else:
            stage_ms[rows, k] = seconds * 1000.0 / rows.size
    return stage_ms


class _HostSide(object):
    """A graph whose inputs and outputs the host sees as numpy arrays: device arrays (of the
    executor that made them, ``to_host``) copied back."""

    def __init__(self, graph, to_host):
        self.graph, self.to_host = graph, to_host

    def run(self, tensors):
        to_host = self.to_host
        ins = tensors if self.graph.device_arrays else [to_host(t) for t in tensors]
        return [to_host(t) for t in self.graph.run(ins)]

    def __getattr__(self, name):
        return getattr(self.graph, name)


class _Serialized(object):
    """A graph whose executor is not reentrant (TVM's VM, TensorRT execution contexts, C
    simulations, the FPGA driver): one call at a time, so one loaded model can serve several
    threads. Each call returns new arrays, so a caller's state is never overwritten."""

    def __init__(self, graph):
        self.graph = graph
        self._lock = threading.Lock()

    def run(self, tensors):
        with self._lock:
            return self.graph.run(tensors)

    def __getattr__(self, name):
        return getattr(self.graph, name)


class EdgeModel(object):
    """A loaded, verified bundle ready to run. Create with :func:`load_bundle`.

    Thread safety: :meth:`run`, :meth:`run_one` and :meth:`exit_logits` may be called from
    several threads on one loaded model. ONNX Runtime sessions run concurrently; graphs of
    other executors take one call at a time; routers get the previous exit's probabilities
    per call. Changing ``thresholds``, ``costs`` or a stage's ``enabled`` while other threads
    run is not synchronized.

    ``builds``: which build of each graph to run instead of the manifest's selection: a
    precision (``"int8"``), a format (``"tvm"``), a ``(format, precision)`` pair, or
    ``{graph id: any of these}``. A graph without the requested build is an error naming the
    builds it has, unless ``fallback`` (it then runs its selected build).
    ``self.builds`` maps each graph id to the build in use, ``self.ran`` to its summary
    (format, precision, processor, device, file), which every :class:`RunResult` carries.
    ``memory_limit_mb`` replaces the memory the bundle and batches are checked against (see
    :mod:`.memory`). ``graph_cache``: a dict shared by several models of one bundle directory,
    so that each graph file is loaded once (executors that are thread-safe only); conversion
    passes compare many build mixes this way.
    """

    def __init__(self, bundle, threads=None, builds=None, memory_limit_mb=None, fallback=False,
                 graph_cache=None, providers=None):
        self.bundle = bundle
        m = bundle.manifest
        if providers is not None:   # checked before anything loads
            providers = EXECUTORS.get("onnx").usable_providers(providers, explicit=True)
        self.input_spec = m["inputs"][0]
        self.input_guard = InputGuard(self.input_spec)  # warns on inputs far off the recorded
        self.num_classes = m["num_classes"]
        self.builds = chosen_builds(m, builds, fallback)
        for gid, b in self.builds.items():
            if providers is not None and b["format"] == "onnx":
                self.builds[gid] = dict(b, providers=providers)
        # What ran, per graph: every RunResult carries it (one shared dict, built once).
        self.ran = dict((gid, ran(b)) for gid, b in self.builds.items())
        # Before any graph is loaded; a build compiled for a fixed batch pads to it.
        self.memory = MemoryPlan.for_bundle(bundle, files_to_load(m, self.builds), memory_limit_mb)
        padded = max([b.get("batch") or 1 for b in self.builds.values()])
        self.memory.check_load(padded)
        self._graph_cache = graph_cache
        self._loaded = []   # every executor made, for the memory they need
        self.stages = [self._graph(s, threads) for s in m["stages"]]
        self.heads = [self._graph(e, threads) for e in m["exits"]]
        self._keep_host_side()
        for e, g in zip(m["stages"] + m["exits"], self.stages + self.heads):   # what runs each
            if getattr(g, "providers", None):
                self.ran[e["id"]]["providers"] = list(g.providers)
        self.stages = [self._adaptive(k, e, threads) for k, e in enumerate(m["stages"])]
        # The manifest's activation figure is a claim: the graphs' own counts bound it below.
        self.memory.use_graph_counts([g.activation_bytes for g in self._loaded])
        self.memory.check_load(padded)
        del self._loaded
        self._routed = [getattr(s, "router", None) is not None for s in self.stages]
        self.policies = [get_policy(e["policy"]) for e in m["exits"]]
        self.num_exits = len(self.heads)
        self._no_exit = [None] * self.num_exits
        self.costs = None  # StageCosts for deadlines and budgets (use_profile)
        self.thresholds = [self.policies[k].check_threshold(
            e["threshold"], self.num_classes, "manifest.json: $.exits[{}].threshold".format(k))
            for k, e in enumerate(m["exits"])]

    def _graph(self, entry, threads):
        build = self.builds[entry["id"]]
        executor = EXECUTORS.get(build["format"])
        cache = self._graph_cache if executor.thread_safe else None
        key = (build["file"], self.bundle.manifest["files"][build["file"]]["sha256"],
               tuple(entry["inputs"]), tuple(entry["outputs"]), threads,
               tuple(build.get("providers") or ()))
        if cache is not None and key in cache:
            self._loaded.append(cache[key])
            return cache[key]
        graph = executor(self._verified(build["file"], executor.companions(build)),
                         entry["inputs"], entry["outputs"], entry["output_shapes"], threads,
                         build=build)
        self._loaded.append(graph)
        if cache is not None:
            cache[key] = graph
        return graph if executor.thread_safe else _Serialized(graph)

    def _verified(self, rel, companions=()):
        """The bundle file ``rel`` for an executor: its bytes are checked against the manifest
        when the executor reads them (:mod:`edgesdk.verified`), not only when the bundle was
        opened."""
        files = self.bundle.manifest["files"]
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""

        def beside(name):   # a listed file in the same folder, for external data
            sibling = folder + name
            return (self.bundle.path(sibling), files[sibling]) if sibling in files else None
        return VerifiedFile(self.bundle.path(rel), files[rel],
                            [(self.bundle.path(c), files[c]) for c in companions], beside)

    def _adaptive(self, k, entry, threads):
        """Stage ``k`` with its gate and width variants, if any."""
        gate, widths = entry.get("gate"), entry.get("widths")
        if entry.get("spatial"):
            return self._spatial(k, entry, threads)
        if entry.get("gated") and not entry["gated"].get("dropped"):
            return self._gated(k, entry, threads)
        if gate is None and widths is None:
            return self.stages[k]
        from edgesdk.runtime.adaptive_stages import GRAPH_ROUTER, AdaptiveStage, make_router
        where = "manifest.json: $.stages[{}]".format(k)
        gate_graph = None if gate is None else self._side_graph(
            k, gate, entry["inputs"], gate["outputs"], threads)
        variants = [self._side_graph(k, v, entry["inputs"], entry["outputs"], threads)
                    for v in (widths or {}).get("variants", [])]
        spec = widths["router"] if widths else None
        router_graph = None if spec is None or spec["name"] != GRAPH_ROUTER else \
            self._side_graph(k, spec, entry["inputs"], ["route"], threads)
        router = make_router(spec, len(variants) + 1, where, router_graph) if widths else None
        return AdaptiveStage(entry["id"], self._host_side(k), gate_graph,
                             gate["threshold"] if gate else None, variants, router,
                             self.heads[k - 1] if k else None)

    def _side_graph(self, k, record, inputs=None, outputs=None, threads=None):
        """A graph stage ``k`` runs beside its own (gate, width variant, router, masker, patch,
        gated block): its TVM CPU build for the device whose TVM build runs the stage where
        it has one, else ONNX on the host CPU. ``inputs``/``outputs``: the tensor names, the
        record's own by default."""
        inputs, outputs = inputs or record["inputs"], outputs or record["outputs"]
        stage = self.builds[self.bundle.manifest["stages"][k]["id"]]
        build = next((b for b in record.get("builds") or [] if stage["format"] == "tvm" and
                      b["format"] == "tvm" and b.get("device") == stage.get("device")),
                     {"file": record["file"], "format": "onnx"})
        executor = EXECUTORS.get(build["format"])
        graph = executor(self._verified(build["file"]), inputs, outputs, [None] * len(outputs),
                         threads, build=build)
        graph.side_graph = record["file"]   # which of the stage's graphs (for checks)
        self._loaded.append(graph)
        return graph if executor.thread_safe else _Serialized(graph)

    def _host_side(self, k):
        """Stage ``k``'s graph as one that takes and gives host arrays."""
        stage = self.stages[k]
        return _HostSide(stage, stage.to_host) if stage.device_arrays else stage

    def _spatial(self, k, entry, threads):
        """Stage ``k``, a masked block, run on its active regions (:mod:`.spatial`)."""
        from edgesdk.runtime.spatial import SpatialStage
        spec = entry["spatial"]
        masker, patch = [self._side_graph(k, spec[key], threads=threads)
                         for key in ("masker", "patch")]
        return SpatialStage(entry["id"], self._host_side(k), masker, patch,
                            spec["granularity"], spec["halo"], spec["threshold"],
                            with_valid="valid" in spec["patch"]["inputs"],
                            adds=spec["patch"]["outputs"] == ["branch"])

    def _gated(self, k, entry, threads):
        """Stage ``k`` run block by block, each sample skipping the branches its gates skip
        (:mod:`.gated_stages`)."""
        from edgesdk.runtime.gated_stages import GatedBlock, GatedStage
        spec = entry["gated"]

        def piece(graph):
            return self._side_graph(k, graph, threads=threads)
        blocks = [GatedBlock("{}/{}".format(entry["id"], b.get("block", i)), piece(b["run"]),
                             piece(b["skip"]) if b["skip"] else None, b["threshold"], b["macs"],
                             b["shortcut"])
                  for i, b in enumerate(spec["blocks"])]
        return GatedStage(entry["id"], self._host_side(k), piece(spec["entry"]), blocks)

    def own_graphs(self):
        """Each stage's own graph (the build in use), without its gate, width variants, gated
        blocks or sparse execution: what the reference outputs are of and builds compare on."""
        return [getattr(s, "stage", s) if getattr(s, "adaptive", False) else
                getattr(s, "dense", s) if hasattr(s, "run_regions") else s for s in self.stages]

    def spatial_stages(self):
        """The stages run on their active regions (:class:`~.spatial.SpatialStage`)."""
        from edgesdk.runtime.spatial import SpatialStage
        return [s for s in self.stages if isinstance(s, SpatialStage)]

    def adaptive_stages(self):
        """The stages with a gate or width variants (:class:`~.adaptive_stages.AdaptiveStage`)
        or gated blocks (:class:`~.gated_stages.GatedStage`)."""
        return [s for s in self.stages if getattr(s, "adaptive", False)]

    def _keep_host_side(self):
        """Where executors keep outputs on a GPU (TensorRT): heads hand the host numpy logits,
        and executors that take host arrays get their GPU inputs copied back."""
        graphs = self.stages + self.heads
        device = [g for g in graphs if g.device_arrays]
        if not device:
            return
        to_host = device[0].to_host   # one executor keeps arrays on the device (TensorRT)
        wrap = lambda g, head: g if g.device_arrays and not head else \
            _HostSide(g, to_host)  # noqa: E731
        self.stages = [wrap(g, False) for g in self.stages]
        self.heads = [wrap(g, True) for g in self.heads]

    def resolve_thresholds(self, thresholds):
        """Validate a user list of per-exit thresholds (None disables an exit)."""
        if thresholds is None:
            return list(self.thresholds)
        thresholds = list(thresholds)
        if len(thresholds) != self.num_exits:
            raise InputError("expected {} thresholds (one per exit, None to disable), got {}".format(
                self.num_exits, len(thresholds)))
        return [p.check_threshold(t, self.num_classes, "threshold of exit {}".format(k))
                for k, (p, t) in enumerate(zip(self.policies, thresholds))]

    def use_profile(self, db, metric="p99_ms", device=None):
        """Predict stage costs for deadlines and budgets from the profile store ``db``
        (measured on this device, or on ``device``); see :class:`~.anytime.StageCosts`."""
        from edgesdk.runtime.anytime import StageCosts
        self.costs = StageCosts.from_store(db, self, metric, device)
        return self.costs

    def run(self, x, thresholds=None, early_exit=True, deadline_ms=None, budget_ms=None,
            max_exit=None):
        """Run a batch ``(N, ...)``; returns a :class:`RunResult`.

        ``thresholds`` overrides the manifest's per-exit thresholds; ``early_exit=False`` runs
        every sample through all stages and only the final head. Bounds (see
        :mod:`.anytime`; they need :meth:`use_profile` or ``costs``): ``deadline_ms`` for the
        whole call in wall time, ``budget_ms`` of predicted compute for the batch, and
        ``max_exit``, the deepest exit any sample reaches.
        """
        start = time.perf_counter()
        x = check_batch(x, self.input_spec, before_copy=self.memory.check_batch)
        self.input_guard.check(x)
        thr = self.resolve_thresholds(thresholds) if early_exit else self._no_exit
        n, last = x.shape[0], self.num_exits - 1
        probs = np.empty((n, self.num_classes), dtype=np.float32)
        exit_index = np.empty(n, dtype=np.int64)
        if n == 0:
            return RunResult(np.zeros(0, dtype=np.int64), probs, exit_index,
                             np.zeros((0, self.num_exits)), 0.0, builds=self.ran)
        if deadline_ms is not None or budget_ms is not None or max_exit is not None:
            from edgesdk.runtime.anytime import run_bounded
            bounds = self._check_bounds(deadline_ms, budget_ms, max_exit)
            probs, exit_index, timeline, notes = run_bounded(self, x, thr, *bounds)
            self._check_finite(probs, x)
            return RunResult(probs.argmax(axis=1), probs, exit_index,
                             stage_ms_table(timeline, n, self.num_exits),
                             (time.perf_counter() - start) * 1000.0, notes, self.ran)
        # Between two graph calls only the calls themselves and the exit decision run; the
        # bookkeeping (per-stage times) is done once at the end. ``alive`` stays None while
        # every sample is still in the batch: plain slices then, no index arrays. When all
        # samples left stop at one exit (always so at batch 1) they are written without
        # compaction. The engine's cost per call, stage step and head is measured by the
        # profiler (runtime/timing.py) and benchmarks/early_exit.py.
        alive, state, timeline, hint, left = None, (x,), [], None, n
        clock, stages, heads, policies, routed = (time.perf_counter, self.stages, self.heads,
                                                  self.policies, self._routed)
        for k in range(self.num_exits):
            t0 = clock()
            state = stages[k].run(state, hint) if routed[k] else stages[k].run(state)
            done = p = None
            leaving = 0
            if k == last:
                p = softmax(heads[k].run(state)[0])
                leaving = left
            elif thr[k] is not None:
                p = softmax(heads[k].run(state)[0])
                done = policies[k].exits(p, thr[k])
                leaving = count_nonzero(done)
            timeline.append((alive, clock() - t0))
            if leaving == left:  # every sample still running stops here
                rows = slice(None) if alive is None else alive
                probs[rows] = p
                exit_index[rows] = k
                break
            if leaving:
                idx = np.flatnonzero(done) if alive is None else alive[done]
                probs[idx] = p[done]
                exit_index[idx] = k
                keep = ~done
                alive = np.flatnonzero(keep) if alive is None else alive[keep]
                left -= leaving
                state = [s[keep] for s in state]
                p = p[keep]
            hint = p  # the next stage's router reads this exit's probabilities
        if not isfinite(probs.sum()):   # one check per call (a sum: ~1 us at batch 1)
            self._check_finite(probs, x)
        return RunResult(probs.argmax(axis=1), probs, exit_index,
                         stage_ms_table(timeline, n, self.num_exits), (clock() - start) * 1000.0,
                         builds=self.ran)

    def _check_finite(self, probs, x):
        """Refuse answers the graphs could not compute: finite inputs so large that float32
        arithmetic inside the network overflows give NaN or infinite probabilities."""
        bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
        if bad.size:
            stats = self.input_spec.get("statistics") or {}
            raise InputError(
                "the network's outputs are not finite for sample(s) {}{}: their inputs reach "
                "|x| = {:.3g}, beyond what its float32 arithmetic holds{}".format(
                    ", ".join(str(i) for i in bad[:10]), " ..." if bad.size > 10 else "",
                    float(np.abs(x[bad]).max()),
                    " (the conversion data reached [{:.3g}, {:.3g}])".format(
                        min(stats["min"]), max(stats["max"])) if stats.get("min") else ""))

    def _check_bounds(self, deadline_ms, budget_ms, max_exit):
        if deadline_ms is not None and budget_ms is not None:
            raise InputError("give a deadline or a budget, not both")
        for name, value in (("deadline_ms", deadline_ms), ("budget_ms", budget_ms)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and
                                          np.isfinite(value)):
                raise InputError("{} must be a positive number of milliseconds, got {!r}".format(
                    name, value))
        if max_exit is not None and (isinstance(max_exit, bool) or not isinstance(
                max_exit, (int, np.integer)) or not 0 <= max_exit < self.num_exits):
            raise InputError("max_exit must be an exit index in 0..{}, got {!r}".format(
                self.num_exits - 1, max_exit))
        return deadline_ms, budget_ms, max_exit

    def run_one(self, sample, thresholds=None, early_exit=True, **bounds):
        """Run one sample given without the batch dimension; returns a SampleResult.
        ``bounds``: ``deadline_ms``, ``budget_ms``, ``max_exit`` as for :meth:`run`."""
        try:
            sample = np.asarray(sample)
        except Exception as exc:  # ragged lists, arbitrary objects: report, don't crash
            raise InputError("input could not be converted to an array: {}".format(exc))
        if sample.ndim != len(self.input_spec["shape"]) - 1:
            raise InputError("run_one() takes one sample of rank {} (no batch dimension), got "
                             "shape {}".format(len(self.input_spec["shape"]) - 1, list(sample.shape)))
        return self.run(sample[None], thresholds, early_exit, **bounds)[0]

    def exit_logits(self, x, batch_size=256, progress=None, adaptive=True):
        """Logits at every exit for every sample (no early exit): a list of (N, C) arrays.

        Used for calibration, accuracy reports and reference checks. ``progress`` is called
        with the number of samples done after each batch. ``adaptive=False`` runs every
        stage's full graph, ignoring gates and width variants (what the reference outputs
        recorded at conversion are of).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError("batch_size must be a positive integer, got {!r}".format(batch_size))
        # Checked whole, converted one slice at a time: a huge (or broadcast) input is never
        # copied at once.
        x = check_batch(x, self.input_spec, convert=False)
        self.memory.check_batch(min(batch_size, x.shape[0]))
        out = [[] for _ in self.heads]
        stages = self.stages if adaptive else self.own_graphs()
        for i in range(0, x.shape[0], batch_size):
            part = check_batch(x[i:i + batch_size], self.input_spec, first=i)
            self.input_guard.check(part)
            state = (part,)
            for k in range(self.num_exits):
                state = stages[k].run(state)
                out[k].append(self.heads[k].run(state)[0])
            if progress:
                progress(min(batch_size, x.shape[0] - i))
        empty = np.zeros((0, self.num_classes), dtype=np.float32)
        return [np.concatenate(o) if o else empty for o in out]

    def exit_probabilities(self, x, batch_size=256, progress=None, adaptive=True):
        """Like :meth:`exit_logits`, as softmax probabilities."""
        return [softmax(l) for l in self.exit_logits(x, batch_size, progress, adaptive)]


def chosen_builds(manifest, builds=None, fallback=False):
    """``{graph id: build record}`` of the builds :class:`EdgeModel` runs for the ``builds``
    request (see there), stages first (the order ``run`` prints builds in)."""
    if isinstance(builds, dict):
        unknown = sorted(set(builds) - {e["id"] for e in graph_entries(manifest)})
        if unknown:
            raise InputError("builds= names graphs the bundle does not have: {}".format(
                ", ".join(unknown)))
    out = {}
    for e in manifest["stages"] + manifest["exits"]:
        want = builds.get(e["id"]) if isinstance(builds, dict) else builds
        out[e["id"]] = pick_build(e, want, fallback)
    return out


def load_bundle(path, threads=None, verify=True, builds=None, memory_limit_mb=None,
                fallback=False, trusted_keys=None, providers=None):
    """Open and verify a bundle and prepare its graphs for running.

    ``threads``: CPU threads for the executors (default: all cores). ``verify=False`` skips
    the per-file sha256 check (the manifest is always validated). ``builds``: run other
    builds than the selected ones; a graph without the requested build is an error unless
    ``fallback`` (see :class:`EdgeModel`). ``memory_limit_mb``: refuse what needs more
    (default: the smaller of the target's declared memory and this machine's).
    ``trusted_keys``: Ed25519 public keys (32 bytes, hex, or files holding hex); the bundle
    must then carry a valid signature by one of them (:mod:`edgesdk.signing`), or it is
    refused before any graph is loaded. ``providers``: ONNX Runtime execution providers for
    the ONNX builds, preferred first (``["QNNExecutionProvider"]``; the CPU's is added last),
    each of which this onnxruntime must have; default: the board's preference recorded at
    conversion, of those it has. Each graph's ``ran`` entry names the providers it got.
    """
    # The graphs the engine loads are hashed by the executors on the bytes they load
    # (edgesdk.verified), so opening the bundle checks their sizes only; every other file
    # (other builds, references, caches) is hashed here.
    bundle = read_bundle(path, verify=verify, hashed_when_read=lambda m: files_to_load(
        m, chosen_builds(m, builds, fallback)))
    if trusted_keys is not None:
        from edgesdk.signing import check_signature
        check_signature(bundle.manifest, trusted_keys, bundle.root)
    return EdgeModel(bundle, threads=threads, builds=builds, memory_limit_mb=memory_limit_mb,
                     fallback=fallback, providers=providers)
