"""Make a bundle ready for TensorRT on its board: checked graphs, optimization profiles, the
calibration cache and one ``trtexec`` command per graph. Engines themselves are built on the
device (:mod:`edgesdk.runtime.executors.tensorrt_build`), since TensorRT plans are specific to the GPU
and the TensorRT version that builds them.

What the bundle gets (replacing an earlier plan and its engines):

* ``manifest["tensorrt"]``: the TensorRT release, the device name, the precision, and per
  graph the ONNX file TensorRT parses, the optimization profile (min/opt/max shape of every
  input), the calibration cache and the ``trtexec`` line;
* ``tensorrt/onnx/``: graphs with decomposed operators (only where ``decompose`` changed one);
* ``calibration/tensorrt/<graph>.cache``: TensorRT's calibration cache from the bundle's
  symmetric INT8 build, for ``trtexec --int8 --calib=`` (implicit quantization);
* ``tensorrt/trtexec.sh``: every ``trtexec`` command, run from the bundle directory.
"""
import logging
import os
import shlex

import numpy as np

from edgesdk.converters.builds import fp32_file
from edgesdk.converters.draft import edit_bundle
from edgesdk.converters.tensorrt.check import Problem, decompose, graph_problems, raise_problems
from edgesdk.deps import require
from edgesdk.errors import ConversionError, InputError
from edgesdk.manifest import graph_entries
from edgesdk.runtime.executors.tensorrt_build import DEFAULT_WORKSPACE_MB
from edgesdk.targets import TARGETS, get_target
from edgesdk.converters.tensorrt.ops import tensorrt_ops

log = logging.getLogger(__name__)

TRT_DIR = "tensorrt"
SCRIPT = TRT_DIR + "/trtexec.sh"
CACHE_DIR = "calibration/tensorrt"
DEFAULT_BATCH = (1, 1, 32)


def parse_batch_profile(text):
    """``--batch``: ``N`` (static) or ``MIN:OPT:MAX``; returns ``(min, opt, max)``."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise InputError("--batch takes N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got "
                         "'{}'".format(text))
    return tuple(values)


def parse_shape_profile(text):
    """``--shape NAME=MIN:OPT:MAX`` with shapes like ``1x3x64x64``, or trtexec's
    ``NAME:1x3x64x64`` for one fixed shape (the name may hold colons, as TensorFlow's
    ``input:0``); returns ``(name, {"min": [...], "opt": [...], "max": [...]})``."""
    given = text = str(text)
    if "=" not in text and ":" in text:
        name, _, shape = text.rpartition(":")
        text = "{}={}:{}:{}".format(name, shape, shape, shape)
    name, _, spec = text.partition("=")
    try:
        shapes = [[int(d) for d in s.split("x")] for s in spec.split(":")]
    except ValueError:
        shapes = []
    if not name or len(shapes) != 3 or len({len(s) for s in shapes}) != 1 or \
            any(d < 1 for s in shapes for d in s) or \
            any(not a <= b <= c for a, b, c in zip(*shapes)):
        raise InputError("--shape takes NAME=MIN:OPT:MAX with shapes like 1x3x64x64 and "
                         "MIN <= OPT <= MAX in every dimension, or NAME:1x3x64x64, got "
                         "'{}'".format(given))
    return name, dict(zip(("min", "opt", "max"), shapes))


def _input_dims(model):
    """``{input name: [dim or None]}`` of an ONNX graph's real inputs."""
    inits = {t.name for t in model.graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input if i.name not in inits}


def graph_profile(gid, model, batch, shapes):
    """The optimization profile of one graph: ``{input: {min, opt, max}}``, the batch range on
    dimension 0 and ``shapes`` for inputs named there; a :class:`Problem` for every other
    dynamic dimension (TensorRT needs a range for each)."""
    profile, problems = {}, []
    for name, dims in _input_dims(model).items():
        if name in shapes:
            if len(shapes[name]["min"]) != len(dims):
                problems.append(Problem(gid, "(input)", name, "--shape gives rank {}, the input "
                                        "has rank {}".format(len(shapes[name]["min"]), len(dims))))
            profile[name] = shapes[name]
            continue
        dynamic = [k for k, d in enumerate(dims) if d is None and k > 0]
        if dynamic:
            problems.append(Problem(gid, "(input)", name, "dimension(s) {} are dynamic and have "
                                    "no optimization profile".format(dynamic),
                                    "give one: --shape {}=MIN:OPT:MAX".format(name)))
            continue
        profile[name] = {key: [b] + dims[1:] for key, b in zip(("min", "opt", "max"), batch)}
    return profile, problems


def _shape_arg(profile, key):
    return ",".join("{}:{}".format(name, "x".join(str(d) for d in p[key]))
                    for name, p in profile.items())


def trtexec_line(onnx_rel, engine_rel, profile, precision, calib=None, workspace_mb=1024,
                 release="8.2"):
    """The ``trtexec`` command that builds one graph's engine as edgesdk does (paths relative
    to the bundle directory), with the builder workspace ``build-engines`` uses: trtexec 8.2
    spells it ``--workspace=MiB``, later releases ``--memPoolSize=workspace:MiB``."""
    args = ["trtexec", "--onnx=" + onnx_rel, "--saveEngine=" + engine_rel]
    args += ["--{}Shapes={}".format(k, _shape_arg(profile, k)) for k in ("min", "opt", "max")]
    args.append("--workspace={}".format(workspace_mb) if release == "8.2" else
                "--memPoolSize=workspace:{}".format(workspace_mb))
    if precision in ("fp16", "int8"):
        args.append("--fp16")
    if precision == "int8":
        args.append("--int8")
    if calib:
        args.append("--calib=" + calib)
    return " ".join(shlex.quote(a) for a in args)


def engine_file(device, gid, precision):
    """Where the engine of graph ``gid`` goes inside the bundle."""
    return "{}/{}/{}.{}.engine".format(TRT_DIR, device, gid, precision)


def _int8_build(entry):
    return next((b for b in entry.get("builds") or [] if b["format"] == "onnx"
                 and b.get("precision") == "int8"), None)


def _verify_rewrite(gid, before, after, profile):
    """Run the original and the decomposed graph on the same random inputs (opt shapes)."""
    from edgesdk.runtime.executors.ort import make_session
    rng = np.random.default_rng(0)
    feeds = {n: rng.normal(size=p["opt"]).astype(np.float32) * 3 for n, p in profile.items()}
    a = make_session(before.SerializeToString()).run(None, feeds)
    b = make_session(after.SerializeToString()).run(None, feeds)
    for x, y in zip(a, b):
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True):
            raise ConversionError("the decomposed {} differs from the original (max abs error "
                                  "{})".format(gid, float(np.nanmax(np.abs(x - y)))))


def prepare_tensorrt(bundle, target="jetson-tx2", precision=None, batch=DEFAULT_BATCH,
                     shapes=None, decompose_ops=False, workspace_mb=DEFAULT_WORKSPACE_MB):
    """Check every stage and head of ``bundle`` (a bundle path, or a draft of one) against
    the TensorRT release of ``target``, and write the TensorRT plan (see the module doc).
    ``precision``: ``fp32``,
    ``fp16`` or ``int8`` (default: the target's); ``int8`` parses the bundle's symmetric INT8
    (Q/DQ) builds. ``batch``: the ``(min, opt, max)`` batch of every optimization profile;
    ``shapes``: ``{input: {"min", "opt", "max"}}`` for inputs with other dynamic dimensions.
    ``decompose_ops``: rewrite operators the release lacks where a decomposition exists.
    ``workspace_mb``: the builder workspace per engine, in the ``trtexec`` lines and the plan
    (``build-engines`` uses it unless told otherwise). Everything TensorRT would refuse is
    reported at once. Returns the plan written."""
    onnx = require("onnx", "onnx", "prepare TensorRT builds")
    board = get_target(target)
    if "tensorrt" not in board.toolchains or not board.tensorrt:
        raise InputError("target '{}' has no TensorRT; targets with it: {}".format(
                             target, ", ".join(n for n in TARGETS.names()
                                               if TARGETS.get(n).tensorrt)).format(target))
    ops = tensorrt_ops(board.tensorrt)
    precision = precision or board.default_precision
    if precision not in board.precisions:
        raise InputError("target '{}' runs {}; got --precision {}".format(
            target, ", ".join(board.precisions), precision))
    warnings = []
    if precision in board.slow_precisions:
        warnings.append("{} on {}: {}; FP16 (--precision fp16) is the fast path there".format(
            precision, target, board.slow_precisions[precision]))
        log.warning(warnings[-1])
    shapes = dict(shapes or {})
    with edit_bundle(bundle) as draft:
        entries = graph_entries(draft.manifest)
        device = "{}-gpu".format(target)
        sources, graphs, problems = {}, {}, []
        for entry in entries:
            gid = entry["id"]
            if precision == "int8":
                build = _int8_build(entry)
                if build is None:
                    raise InputError("graph '{}' has no INT8 build: convert with --precisions int8 "
                                     "and calibration data for target {}".format(gid, target))
                sources[gid] = build["file"]
            else:
                sources[gid] = fp32_file(entry)
            graphs[gid] = onnx.load(draft.path(sources[gid]))
        profiles, rewrites = {}, {}
        for gid, model in graphs.items():
            profiles[gid], found = graph_profile(gid, model, batch, shapes)
            problems += found
            if decompose_ops:
                graphs[gid], rewrites[gid] = decompose(model, ops)
                if rewrites[gid] and not found:
                    _verify_rewrite(gid, model, graphs[gid], profiles[gid])
        for gid, model in graphs.items():
            problems += graph_problems(gid, model, ops,
                                       no_bool=precision == "int8" and board.int8_no_bool)
        raise_problems(problems, ops)
        if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
            raise InputError("the workspace is a number of MiB >= 1, got {!r}".format(workspace_mb))
        plan = {"release": ops.name, "target": target, "device": device, "precision": precision,
                "source": ops.source, "warnings": warnings, "script": SCRIPT,
                "workspace_mb": workspace_mb, "graphs": {}}
        manifest = draft.manifest
        _drop_old_plan(draft)
        lines, written = [], []
        for entry in entries:
            gid = entry["id"]
            onnx_rel = sources[gid]
            if rewrites.get(gid):
                onnx_rel = "{}/onnx/{}.{}.onnx".format(TRT_DIR, gid, precision)
                _save(onnx, graphs[gid], draft, onnx_rel)
                written.append(onnx_rel)
            cache = _write_cache(draft, entry, onnx, ops)
            if cache:
                written.append(cache)
            engine = engine_file(device, gid, precision)
            line = trtexec_line(onnx_rel, engine, profiles[gid], precision,
                                workspace_mb=workspace_mb, release=ops.name)
            lines.append(line)
            if cache and precision != "int8":
                lines.append("#   INT8 calibrated by TensorRT from edgesdk's scales instead: " +
                             trtexec_line(sources[gid] if not rewrites.get(gid) else onnx_rel,
                                          engine_file(device, gid, "int8-calib"),
                                          profiles[gid], "int8", cache, workspace_mb, ops.name))
            plan["graphs"][gid] = {"onnx": onnx_rel, "precision": precision,
                                   "profile": profiles[gid], "calibration_cache": cache,
                                   "trtexec": line, "engine": engine,
                                   "decomposed": ["{} ({}) -> {}".format(*r)
                                                  for r in rewrites.get(gid, [])]}
        _write_script(draft, lines, device, ops)
        written.append(SCRIPT)
        draft.add_files(written)
        manifest["tensorrt"] = plan
        manifest["provenance"]["passes"].append(
            {"name": "tensorrt-prepare", "release": ops.name, "precision": precision,
             "decomposed": sum(len(r) for r in rewrites.values())})
    return plan


def _save(onnx, model, draft, rel):
    path = draft.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save_model(model, path)


def _write_cache(draft, entry, onnx, ops):
    """The calibration cache of one graph from its symmetric INT8 build, or None."""
    from edgesdk.converters.tensorrt.calib import activation_scales, cache_text
    build = _int8_build(entry)
    if build is None or "symmetric" not in build.get("activations", ""):
        return None
    scales = activation_scales(onnx.load(draft.path(build["file"])),
                               onnx.load(draft.path(fp32_file(entry))))
    rel = "{}/{}.cache".format(CACHE_DIR, entry["id"])
    path = draft.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="\n") as f:
        f.write(cache_text(scales, ops.cache_version))
    return rel


def _write_script(draft, lines, device, ops):
    path = draft.path(SCRIPT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="\n") as f:
        f.write("#!/bin/sh\n# TensorRT {} engines for {}, as `edgesdk build --toolchain tensorrt "
                "--on-device` builds them.\n# Run on the device, from anywhere: the commands "
                "use paths inside the bundle.\nset -e\ncd \"$(dirname \"$0\")/..\"\nmkdir -p "
                "{}/{}\n".format(ops.version, device, TRT_DIR, device))
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o755)


def _drop_old_plan(draft):
    """Forget an earlier plan: its files, its engines and their builds."""
    manifest = draft.manifest
    old = [f for f in manifest["files"] if f.startswith(TRT_DIR + "/") or
           f.startswith(CACHE_DIR + "/")]
    for f in old:
        os.unlink(draft.path(f))
        del manifest["files"][f]
    for entry in graph_entries(manifest):
        if entry.get("builds"):
            entry["builds"] = [b for b in entry["builds"] if b["format"] != "tensorrt"]
        if entry["format"] == "tensorrt":
            raise InputError("graph '{}' selects a TensorRT engine; select another build before "
                             "preparing again".format(entry["id"]))
    manifest.pop("tensorrt", None)
