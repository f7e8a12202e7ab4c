"""MetaSchedule tuning databases for TVM builds: open (checking the target they were tuned
for), hash, and tune.

A database is a folder with MetaSchedule's two JSON-lines files. Its records are keyed by the
structural hash of each fused TIR function, so one database serves every stage and model
with the same workloads (the same conv shapes); records made for another target are refused,
because applying them would silently change nothing or build code for the wrong processor.
"""
import hashlib
import json
import os

from edgesdk.bundle import write_json_atomic
from edgesdk.errors import BuildError, InputError

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
# Target fields that decide the generated code; a database tuned with different values is
# for another processor. (num-cores only sizes the thread pool.)
CODEGEN_FIELDS = ("kind", "mtriple", "mcpu", "mattr", "tag", "arch", "device", "model")


def database_sha256(folder):
    """sha256 over the database's two files (what a build records)."""
    h = hashlib.sha256()
    for name in DATABASE_FILES:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def record_targets(folder):
    """The distinct targets (as dicts) the database's tuning records were measured for."""
    seen = {}
    with open(os.path.join(folder, DATABASE_FILES[1])) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                target = json.loads(line)[1][2]
            except (ValueError, IndexError, TypeError):
                raise BuildError("{}: line {} is not a MetaSchedule tuning record".format(
                    DATABASE_FILES[1], n))
            seen.setdefault(json.dumps(target, sort_keys=True), target)
    return list(seen.values())


def _codegen_view(target):
    """The fields of a target dict (TVM's export or edgesdk's) that decide generated code."""
    target = dict(target)
    host = target.pop("host", None)
    view = {k: target[k] for k in CODEGEN_FIELDS if target.get(k) not in (None, "", [], ())}
    if isinstance(view.get("mattr"), (list, tuple)):
        view["mattr"] = sorted(view["mattr"])
    if host:
        view["host"] = _codegen_view(host)
    return view


def check_database_target(folder, target):
    """Refuse a database whose records were tuned for another target than ``target`` (a dict)."""
    want = _codegen_view(target)
    for got in record_targets(folder):
        if _codegen_view(got) != want:
            raise BuildError(
                "tuning database '{}' was tuned for {}, not for this build's target {}: tune "
                "again for this target (edgesdk tune) or build without --tuning-db".format(
                    folder, json.dumps(_codegen_view(got), sort_keys=True),
                    json.dumps(want, sort_keys=True)))


def open_database(folder, target):
    """``(MetaSchedule JSONDatabase, sha256)`` for a database folder tuned for ``target``."""
    missing = [f for f in DATABASE_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise InputError("'{}' is not a tuning database (missing {})".format(
            folder, ", ".join(missing)))
    check_database_target(folder, target)
    from tvm.s_tir.meta_schedule.database import JSONDatabase
    return JSONDatabase(work_dir=folder, allow_missing=False), database_sha256(folder)


PROGRESS_FILE = "edgesdk_progress.json"  # tasks finished, so an interrupted run resumes


def fast_build(mod, target, _params):
    """MetaSchedule's default candidate build without its ``import tvm.s_tir.tensor_intrin``:
    that import takes about 50 s in every fresh worker process on 2 cores, past the builder's
    timeout, and every candidate then fails. fp32 schedules use no tensor intrinsics."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_aarch64(mod):
    """Export a tuning candidate for an aarch64 board (linked by the cross compiler)."""
    import tempfile
    from tvm.support import cc
    path = os.path.join(tempfile.mkdtemp(prefix="edgesdk-ms-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return path


def _task_key(task):
    from tvm_ffi import structural_hash
    return "{:016x}".format(structural_hash(task.dispatched[0]) & (2 ** 64 - 1))


def extract_tasks(graphs, target, batch):
    """Tuning tasks of every graph (``{graph id: onnx.ModelProto}``), one per distinct
    workload: ``[(key, ExtractedTask, weight, [graph ids])]``. Workloads repeated across stages
    (or models) are tuned once; their weights add up."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    from edgesdk.converters.tvm.build import import_onnx
    found = {}
    for gid, model in graphs.items():
        mod = relax.get_pipeline("zero")(import_onnx(model, batch))
        for task in ms.relax_integration.extract_tasks(mod, target):
            key = _task_key(task)
            if key in found:
                found[key][2] += task.weight
                found[key][3].append(gid)
            else:
                found[key] = [key, task, task.weight, [gid]]
    return [tuple(v) for v in found.values()]


def _measure_callback(bar, keys, state, state_path, clock):
    """A MeasureCallback that advances ``bar`` by each measured batch of candidates and
    records every task's measured trials and the time spent in ``state_path`` (what a resumed
    run reads); ``clock()`` gives the seconds tuned so far."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            ok = sum(r.error_msg is None for r in runner_results)
            entry = state["tasks"][keys[task_id]]
            entry["trials"] += len(runner_results)
            entry["ok"] += ok
            state["seconds"] = round(clock(), 1)
            write_json_atomic(state_path, state)
            bar.update(len(runner_results), note="{}: {} of {} ran".format(
                entry["task"], ok, len(runner_results)))
    return _Progress()


def tune(graphs, target_dict, database, trials, batch=1, rpc=None, progress=True):
    """Tune every distinct workload of ``graphs`` for ``target_dict`` with MetaSchedule into
    the database folder ``database`` (created or extended). ``trials``: measured candidates per
    workload, in all, over resumed runs. ``rpc``: ``(host, port, key)`` of a TVM tracker to
    measure on boards; otherwise candidates run on this machine, which must then be the
    target. Resumable: each workload's measured trials are recorded as they happen; a rerun
    gives each only what it still lacks, and the records kept seed its search.

    Returns ``{"tasks", "tuned", "skipped", "trials", "seconds", "cost_model",
    "database_sha256"}``.
    """
    import logging
    import time
    from tvm.s_tir import meta_schedule as ms
    from edgesdk.converters.tvm.build import make_target
    from edgesdk.progress import Progress
    if batch is None:
        raise InputError("tuning needs a fixed batch (MetaSchedule measures concrete shapes)")
    if not isinstance(trials, int) or trials < 1:
        raise InputError("trials must be a positive integer, got {!r}".format(trials))
    target = make_target(target_dict)
    os.makedirs(database, exist_ok=True)
    for name in DATABASE_FILES:
        open(os.path.join(database, name), "a").close()
    check_database_target(database, target_dict)
    state_path = os.path.join(database, PROGRESS_FILE)
    state = json.load(open(state_path)) if os.path.exists(state_path) else {"tasks": {}}
    tasks = extract_tasks(graphs, target, batch)
    for key, task, _, gids in tasks:
        entry = state["tasks"].setdefault(key, {"task": task.task_name, "trials": 0, "ok": 0})
        entry["graphs"] = sorted(set(entry.get("graphs", [])) | set(gids))
    # "searched": the budget a finished run gave the workload; MetaSchedule may measure fewer
    # when a small workload has fewer distinct schedules, and that workload is then done.
    todo = [t for t in tasks if max(state["tasks"][t[0]]["trials"],
                                    state["tasks"][t[0]].get("searched", 0)) < trials]
    cost_model = "xgb" if _has_xgboost() else "random"
    start, before = time.time(), state.get("seconds", 0.0)

    def clock():  # wall time of every run that tuned into this folder, this one included
        return before + time.time() - start
    if todo:
        if rpc is None:
            runner = ms.runner.LocalRunner(timeout_sec=30)
            builder = ms.builder.LocalBuilder(f_build=fast_build, timeout_sec=90)
        else:
            host, port, key = rpc
            runner = ms.runner.RPCRunner(rpc_config=ms.runner.RPCConfig(
                tracker_host=host, tracker_port=int(port), tracker_key=key,
                session_timeout_sec=60))
            cross = (target_dict.get("mtriple") or "").startswith("aarch64")
            builder = ms.builder.LocalBuilder(f_build=fast_build, timeout_sec=90,
                                              f_export=export_aarch64 if cross else None)
        # MetaSchedule logs every step to stdout; keep its files (DATABASE/logs), not the noise.
        ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
        ms_log.setLevel(logging.ERROR)
        # MetaSchedule re-lists the logger's handlers by name when it configures logging; an
        # unnamed one (left by an earlier run in this process) makes that fail.
        for handler in [h for h in ms_log.handlers if h.get_name() is None]:
            ms_log.removeHandler(handler)
        contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=[t[1] for t in todo], work_dir=database, seed=0)
        weights = [float(t[2]) for t in todo]  # summed over the graphs sharing the workload
        left = [trials - state["tasks"][t[0]]["trials"] for t in todo]
        with Progress(sum(left), "tuning {} workloads".format(len(todo)),
                      enabled=progress) as bar:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=database,
                max_trials_global=sum(left), max_trials_per_task=max(left),
                num_trials_per_iter=min(16, max(left)), builder=builder, runner=runner,
                database=ms.database.JSONDatabase(work_dir=database),
                cost_model=cost_model,
                measure_callbacks=list(ms.MeasureCallback.create("default")) + [
                    _measure_callback(bar, [t[0] for t in todo], state, state_path, clock)])
    if todo:  # a reused database still says what it cost
        state["seconds"] = round(clock(), 1)
        state["cost_model"] = cost_model
        for t in todo:
            state["tasks"][t[0]]["searched"] = trials
    write_json_atomic(state_path, state)
    return {"tasks": len(tasks), "tuned": len(todo), "skipped": len(tasks) - len(todo),
            "trials": sum(state["tasks"][t[0]]["trials"] for t in tasks),
            "seconds": round(time.time() - start, 1), "total_seconds": state.get("seconds", 0.0),
            "cost_model": state.get("cost_model", cost_model),
            "database_sha256": database_sha256(database)}


def _has_xgboost():
    import importlib.util
    return importlib.util.find_spec("xgboost") is not None


def tune_bundle(bundle_path, target="host", processor="cpu", trials=32, batch=1,
                database=None, rpc=None, progress=True):
    """Tune a bundle's graphs for a board processor (see :func:`tune`), then build them with
    the database (:func:`edgesdk.converters.tvm.build.build_tvm`), which stores a copy in the
    bundle. ``database``: the folder to tune into (default ``BUNDLE.tuning/TARGET-PROCESSOR``
    beside the bundle); give one folder to several bundles to share their workloads."""
    import onnx
    from edgesdk import bundle as bundle_io
    from edgesdk.converters.builds import fp32_file
    from edgesdk.manifest import graph_entries
    from edgesdk.converters.tvm.build import build_name, build_tvm, resolve_target
    from edgesdk.targets import get_target
    proc = get_target(target).processor(processor)
    if proc.kernels:
        raise InputError("tuning GPU kernels is not supported yet: tune the CPU processor")
    bundle = bundle_io.read_bundle(bundle_path)
    graphs = {e["id"]: onnx.load(bundle.path(fp32_file(e)))
              for e in graph_entries(bundle.manifest)}
    database = database or os.path.join(
        os.path.abspath(bundle_path).rstrip(os.sep) + ".tuning", build_name(target, processor))
    result = tune(graphs, resolve_target(proc), database, trials, batch, rpc, progress)
    result["database"] = database
    result["builds"] = build_tvm(bundle_path, target, processor, batch=batch, database=database,
                                 progress=progress)
    return result
