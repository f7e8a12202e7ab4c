"""TVM builds of a bundle's stages and heads: ONNX -> Relax -> a library for a board's processor.

Every stage and head's FP32 ONNX graph is imported with TVM's ONNX frontend, compiled for the
processor's TVM target (applying a MetaSchedule tuning database when one is given) and
exported as a library: a shared library for Linux boards (cross-linked with the board's
toolchain, then checked: ELF machine, needed libraries, glibc symbol versions), or an archive
of object files for Android, linked with the NDK on the user's side. GPU processors also get
their kernel source beside the library (:mod:`.tvm_kernels`).

The builds go into the bundle's graph entries (``builds``, format ``tvm``) with the TVM
version, the target dict, the tuning database's sha256 and the checks' results. The bundle is
rebuilt in a staging copy and replaces the old one only when every graph built.
"""
import contextlib
import json
import logging
import os
import shutil

from edgesdk.converters.builds import fp32_file
from edgesdk.converters.draft import edit_bundle
from edgesdk.converters.tvm.elf_check import check_library
from edgesdk.deps import require
from edgesdk.errors import BuildError, InputError, UnsupportedOpError
from edgesdk.manifest import graph_entries, put_build, side_graphs
from edgesdk.targets import get_target

log = logging.getLogger(__name__)

TVM_DIR = "tvm"  # where TVM artifacts live inside a bundle
KERNEL_SUFFIX = {"cuda": ".cu", "opencl": ".cl"}


def tvm_module():
    """The TVM compiler package (``tvm`` extra)."""
    return require("tvm", "tvm", "build TVM libraries")


def resolve_target(processor):
    """The processor's TVM target dict with ``None`` fields filled from LLVM's view of this
    machine (the ``host`` board)."""
    target = json.loads(json.dumps(processor.tvm_target))
    if isinstance(target, str):   # a TVM target string or tag, given as --target
        return target
    if any(v is None for v in target.values()):
        from tvm.target import codegen
        fill = {"mtriple": codegen.llvm_get_system_triple(), "mcpu": codegen.llvm_get_system_cpu()}
        target = {k: fill.get(k) if v is None else v for k, v in target.items()}
    return target


def make_target(target):
    """A ``tvm.target.Target`` from a dict; a dict this TVM version rejects is a clear error."""
    tvm = tvm_module()
    try:
        return tvm.target.Target(target)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise BuildError("TVM {} rejects the target {}: {}".format(
            tvm.__version__, json.dumps(target, sort_keys=True), str(exc).splitlines()[0]))


def unsupported_nodes(graphs):
    """``[(graph id, node name, op type)]`` for every node TVM's ONNX frontend cannot convert
    in ``graphs`` (``{graph id: onnx.ModelProto}``), all graphs at once."""
    tvm_module()
    from tvm.relax.frontend.onnx import onnx_frontend
    known = set(onnx_frontend._get_convert_map()) | {"If", "Constant"}
    found = []
    for gid, model in graphs.items():
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in known:
                op = node.op_type if node.domain in ("", "ai.onnx") else \
                    node.domain + "." + node.op_type
                found.append((gid, node.name or "(unnamed)", op))
    return found


def check_supported(graphs):
    """Raise :class:`UnsupportedOpError` listing every unsupported node with its graph."""
    found = unsupported_nodes(graphs)
    if found:
        tvm = tvm_module()
        raise UnsupportedOpError(
            "TVM {}'s ONNX frontend cannot convert {} node(s):\n{}\nRewrite these ops in the "
            "model (or keep these graphs on ONNX Runtime).".format(
                tvm.__version__, len(found),
                "\n".join("  {}: node '{}' ({})".format(g, n, op) for g, n, op in found)))


def _input_dims(model):
    return [(i.name, [d.dim_value if d.HasField("dim_value") else None
                      for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]


def batch_for(model, batch):
    """The batch to compile ``model`` for: ``batch``, or None (symbolic) where an input has
    symbolic dimensions besides the batch (a masked block's patch graph takes a mosaic of any
    width), which TVM's frontend can only keep symbolic all together."""
    return None if any(None in dims[1:] for _, dims in _input_dims(model)) else batch


def import_onnx(model, batch=None):
    """Relax IRModule of an ONNX model; ``batch``: fix the symbolic first dimension of every
    input to this size (None keeps it symbolic; see :func:`batch_for`)."""
    tvm_module()
    from tvm.relax.frontend.onnx import from_onnx
    shapes = None
    if batch is not None:
        shapes = {name: [batch] + dims[1:] for name, dims in _input_dims(model)}
    try:
        return from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises TVM and Python errors alike
        raise BuildError("TVM's ONNX frontend failed: {}".format(str(exc).splitlines()[0]))


def compile_module(mod, target, database=None):
    """Compile a Relax module for ``target`` (a ``tvm.target.Target``); with ``database`` (a
    MetaSchedule database) its tuned schedules replace the default ones."""
    tvm = tvm_module()
    try:
        if database is None:
            return tvm.relax.build(mod, target=target)
        from tvm.s_tir.meta_schedule.relax_integration import compile_relax
        return compile_relax(database, mod, target, params=None)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError("TVM could not compile for {}: {}".format(
            target, str(exc).strip().splitlines()[-1]))


@contextlib.contextmanager
def _source_only_cuda():
    """Keep CUDA kernels as source in the library: compiled on the board (nvcc for its arch)
    when the library loads, never here, where a CUDA driver would compile for the wrong GPU."""
    old = os.environ.get("TVM_COMPILE_FORCE_FALLBACK")
    os.environ["TVM_COMPILE_FORCE_FALLBACK"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TVM_COMPILE_FORCE_FALLBACK"]
        else:
            os.environ["TVM_COMPILE_FORCE_FALLBACK"] = old


def kernel_source(executable, language):
    """The generated GPU kernel source (CUDA C or OpenCL C) of a compiled module; a GPU build
    without a device module (every kernel fell back to CPU code) is an error."""
    host = executable.mod.imports[0]
    devices = [m for m in host.imports if m.kind == language]
    if not devices:
        raise BuildError("TVM produced no {} kernels (kinds: {}); the GPU schedules were not "
                         "applied".format(language, [m.kind for m in host.imports]))
    return "\n".join(m.inspect_source("") for m in devices)


def export(executable, path, processor):
    """Write the compiled module to ``path``: a shared library linked by the processor's
    (cross) compiler, or a .tar of object files for ``object-archive`` processors."""
    tvm_module()
    from tvm.support import cc
    if processor.artifact == "object-archive":
        executable.export_library(path)
        return
    fcompile = None
    if processor.cross_compiler:
        if shutil.which(processor.cross_compiler) is None:
            raise BuildError(
                "the cross compiler '{}' is not installed; on Debian/Ubuntu: apt-get install {} "
                "(`make venv` installs it)".format(processor.cross_compiler,
                                                   processor.cross_package))
        fcompile = cc.cross_compiler(processor.cross_compiler)
    try:
        executable.export_library(path, fcompile=fcompile)
    except Exception as exc:
        raise BuildError("linking '{}' failed ({}): {}".format(
            os.path.basename(path), processor.cross_compiler or "g++", str(exc).strip()[-800:]))


def build_name(target, processor):
    """The folder (inside the bundle's ``tvm/``) of one board processor's builds: the board's
    name (a board file's own), then the processor."""
    return "{}-{}".format(get_target(target).name, processor)


def build_tvm(bundle, target="host", processor="cpu", batch=1, database=None,
              progress=True):
    """Build every stage and head of ``bundle`` (a bundle path, or a draft of one) with TVM
    for one processor of a board and record the builds in its manifest (replacing earlier TVM
    builds for the same board processor). Returns the list of new build records.

    ``batch``: the batch size the libraries are compiled for (the TVM executor runs larger
    batches in slices); None compiles a symbolic batch (any size, but MetaSchedule cannot tune
    it). ``database``: a tuning database folder (:mod:`.tune`); it must have been tuned
    for the same TVM target.
    """
    import onnx
    from edgesdk.converters.tvm.tune import open_database
    from edgesdk.progress import Progress
    tvm = tvm_module()
    board = get_target(target)
    if "tvm" not in board.toolchains:
        raise InputError("target '{}' has no TVM toolchain".format(target))
    proc = board.processor(processor)
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise InputError("batch must be a positive integer or None, got {!r}".format(batch))
    target_dict = resolve_target(proc)
    tvm_target = make_target(target_dict)
    with edit_bundle(bundle) as draft:
        manifest = draft.manifest
        entries = graph_entries(manifest)
        sources = {e["id"]: fp32_file(e) for e in entries}
        graphs = {gid: onnx.load(draft.path(rel)) for gid, rel in sources.items()}
        check_supported(graphs)
        db, db_sha = (None, None)
        if database is not None:
            db, db_sha = open_database(database, target_dict)
        name = build_name(target, processor)
        suffix = ".tar" if proc.artifact == "object-archive" else ".so"
        records = {}
        out_dir = draft.path(TVM_DIR + "/" + name)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        with Progress(len(entries), "tvm build " + name, enabled=progress) as bar:
            for entry in entries:
                gid = entry["id"]
                rel = "/".join((TVM_DIR, name, gid + suffix))
                mod = import_onnx(graphs[gid], batch)
                with _source_only_cuda() if proc.kernels == "cuda" else contextlib.nullcontext():
                    executable = compile_module(mod, tvm_target, db)
                export(executable, draft.path(rel), proc)
                record = {"file": rel, "format": "tvm", "precision": "fp32",
                          "device": name, "arch": proc.arch, "processor": proc.name,
                          "artifact": proc.artifact, "batch": batch,
                          "tvm": {"version": tvm.__version__, "target": target_dict,
                                  "tuning_database_sha256": db_sha, "source": sources[gid]}}
                if proc.kernels:
                    # The kernels are inside the library too; this copy is for reading,
                    # checking with the board's compiler, or building by hand.
                    src = rel[:-len(suffix)] + KERNEL_SUFFIX[proc.kernels]
                    with open(draft.path(src), "w") as f:
                        f.write(kernel_source(executable, proc.kernels))
                    record["kernels"] = {"language": proc.kernels, "file": src,
                                         "arch": tvm_target.attrs.get("arch"),
                                         "device_build": proc.device_build}
                if proc.artifact == "shared-library":
                    record["elf"] = check_library(draft.path(rel), proc.arch, board.glibc)
                records[gid] = record
                bar.update(note=gid)
        # The graphs a stage runs beside its own (gates, masked blocks' patches, gated
        # blocks), for CPU processors: the runtime runs them with the stage's TVM build.
        side = [g for e in manifest["stages"] for g in side_graphs(e)] \
            if proc.name == "cpu" and proc.artifact == "shared-library" else []
        with Progress(len(side), "tvm build " + name + " (side graphs)",
                      enabled=progress and bool(side)) as bar:
            for graph in side:
                rel = "/".join((TVM_DIR, name, graph["file"].rsplit("/", 1)[-1][:-5] + suffix))
                model = onnx.load(draft.path(graph["file"]))
                check_supported({graph["file"]: model})
                compiled = batch_for(model, batch)
                export(compile_module(import_onnx(model, compiled), tvm_target, db),
                       draft.path(rel), proc)
                record = {"file": rel, "format": "tvm", "precision": "fp32", "device": name,
                          "arch": proc.arch, "processor": proc.name, "artifact": proc.artifact,
                          "batch": compiled,
                          "elf": check_library(draft.path(rel), proc.arch, board.glibc),
                          "tvm": {"version": tvm.__version__, "target": target_dict,
                                  "tuning_database_sha256": db_sha, "source": graph["file"]}}
                graph["builds"] = [b for b in graph.get("builds") or []
                                   if b.get("device") != name] + [record]
                bar.update(note=graph["file"])
        if database is not None:
            _copy_database(database, os.path.join(out_dir, "tuning"))
        for entry in entries:
            put_build(entry, records[entry["id"]], lambda b: b.get("device") == name)
        draft.remove_files("/".join((TVM_DIR, name)) + "/")
        draft.add_files(os.path.relpath(os.path.join(d, f), draft.root).replace(os.sep, "/")
                        for d, _, fs in os.walk(out_dir) for f in fs)
        manifest["provenance"]["passes"].append(
            {"name": "tvm-build", "device": name, "tvm": tvm.__version__, "target": target_dict,
             "batch": batch, "tuning_database_sha256": db_sha})
    return [records[e["id"]] for e in entries]


def _copy_database(src, dst):
    """Keep the tuning database the builds used inside the bundle (two JSON files)."""
    from edgesdk.converters.tvm.tune import DATABASE_FILES
    os.makedirs(dst, exist_ok=True)
    for f in DATABASE_FILES:
        shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
