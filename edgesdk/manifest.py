"""manifest.json: the schema, a hand-written validator and the content digest.

Read on the device with the standard library's json; every message names the JSON path that
is wrong and what is accepted. ``manifest.schema.json`` beside this module mirrors these rules for tools.
Python 3.6 compatible.
"""
import hashlib
import json
import math
import re

from edgesdk.backends import FORMATS
from edgesdk.errors import ManifestError, SchemaVersionError

SCHEMA_VERSION = 1
# Numeric precision of a graph build (weights/compute; inputs and outputs stay float32).
PRECISIONS = ("fp32", "fp16", "int8", "fixed")
DTYPES = ("float32",)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ID_TEXT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")   # e.g. CUDAExecutionProvider
# A manifest is small; refusing huge ones keeps a hostile file from exhausting memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_DIM = 1 << 20
# Deeper JSON could parse yet exhaust the stack when the digest re-encodes it.
MAX_DEPTH = 64
# Elements of one sample of any tensor the runtime allocates from manifest shapes (1 GiB of
# float32): with MAX_DIM alone, [N, 2**20, 2**20] would pass.
MAX_SAMPLE_ELEMENTS = 1 << 28


def canonical_json(obj):
    """The byte string the digest is computed over (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def content_digest(manifest):
    """sha256 of the manifest without its own ``manifest_sha256`` field."""
    body = dict((k, v) for k, v in manifest.items() if k != "manifest_sha256")
    return hashlib.sha256(canonical_json(body)).hexdigest()


def graph_entries(manifest):
    """Every stage and head entry, in the runtime's order (stage 0, head 0, stage 1, ...)."""
    return [e for k in range(len(manifest["stages"]))
            for e in (manifest["stages"][k], manifest["exits"][k])]


# Accessors for what several layers read from graph entries (the validator below fixes the
# types): a graph entry is a stage or exit dict; a build record has at least ``file`` and
# ``format``, and ``precision`` unless it is FP32.

def gated_graphs(stage, dropped=True):
    """The graph records of a stage's gated blocks, in the order they run: the entry, then
    each block's run and skip graphs (``dropped`` False: none when profiling dropped the
    gates, as the engine then loads none)."""
    gated = stage.get("gated") or {}
    if not gated or (gated.get("dropped") and not dropped):
        return []
    return [gated["entry"]] + [g for b in gated["blocks"] for g in (b["run"], b["skip"]) if g]


def side_graphs(stage, dropped=True):
    """The graph records a stage runs beside or instead of its own graph, each with a
    ``file``: its gate, width variants, learned router, a masked block's masker and patch
    graphs, and its gated blocks' graphs (``dropped`` as for :func:`gated_graphs`)."""
    widths = stage.get("widths") or {}
    spatial = stage.get("spatial") or {}
    parts = [stage.get("gate") or {}, widths.get("router") or {}] + \
        widths.get("variants", []) + [spatial.get(k) or {} for k in ("masker", "patch")]
    return [p for p in parts if "file" in p] + gated_graphs(stage, dropped)


def precision_of(build):
    """The precision of a build record or graph entry (FP32 where it is left out)."""
    return build.get("precision", "fp32")


def selected_build(entry):
    """The build a graph entry selects, as a build record (its listed one, if listed)."""
    listed = next((b for b in entry.get("builds") or [] if b["file"] == entry["file"]), None)
    if listed is not None:
        return listed
    record = {"file": entry["file"], "format": entry["format"], "precision": precision_of(entry)}
    if entry.get("providers"):
        record["providers"] = entry["providers"]
    return record


def entry_builds(entry):
    """Every build of a graph entry, the selected one first (an entry without a ``builds``
    list has only that one). The records are the manifest's own dicts where listed."""
    selected = selected_build(entry)
    return [selected] + [b for b in entry.get("builds") or [] if b["file"] != entry["file"]]


def put_build(entry, record, replaces):
    """Add the build ``record`` to a graph entry, dropping the builds ``replaces(build)``
    says it replaces (an earlier build for the same device); the selection stays."""
    entry["builds"] = [b for b in entry_builds(entry) if not replaces(b)] + [record]


def _fail(path, msg):
    raise ManifestError("manifest.json: {}: {}".format(path, msg))


def _get(obj, key, path, types, optional=False):
    if not isinstance(obj, dict):
        _fail(path, "expected an object, got {}".format(type(obj).__name__))
    if key not in obj:
        if optional:
            return None
        _fail(path, "missing required key '{}'".format(key))
    value = obj[key]
    # bool is an int subclass in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in types:
        _fail("{}.{}".format(path, key), "expected {}, got a boolean".format(_names(types)))
    if not isinstance(value, types):
        _fail("{}.{}".format(path, key), "expected {}, got {}".format(
            _names(types), type(value).__name__))
    return value


def _names(types):
    table = {dict: "an object", list: "a list", str: "a string", int: "an integer",
             float: "a number", bool: "a boolean", type(None): "null"}
    return " or ".join(table.get(t, t.__name__) for t in types)


def _finite(value):
    """A finite float, or an int a float can hold (math.isfinite(10**400) raises)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(obj, key, path, optional=False, allow_null=False):
    types = (int, float, type(None)) if allow_null else (int, float)
    value = _get(obj, key, path, types, optional)
    if value is not None and not _finite(value):
        _fail("{}.{}".format(path, key), "must be finite")
    return value


def check_relative_path(rel, path):
    """A bundle-relative POSIX path: no absolute path, no '..', no backslashes or drive letters."""
    if not isinstance(rel, str) or not rel:
        _fail(path, "expected a non-empty relative path")
    if rel.startswith("/") or "\\" in rel or ":" in rel or "\x00" in rel:
        _fail(path, "'{}' must be a relative POSIX path inside the bundle".format(rel))
    try:
        rel.encode("utf-8")  # JSON's "\\ud800" escape gives a lone surrogate: no file name
    except UnicodeEncodeError:
        _fail(path, "{!r} is not valid Unicode (lone surrogate)".format(rel))
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        _fail(path, "'{}' must not contain empty, '.' or '..' components".format(rel))
    return rel


def _check_files_table(files):
    for rel, entry in files.items():
        p = "$.files['{}']".format(rel)
        check_relative_path(rel, p)
        if rel == "manifest.json":
            _fail(p, "manifest.json cannot list itself")
        digest = _get(entry, "sha256", p, (str,))
        if not _SHA256.match(digest):
            _fail(p + ".sha256", "expected 64 lowercase hex digits")
        size = _get(entry, "bytes", p, (int,))
        if size < 0:
            _fail(p + ".bytes", "must be >= 0")


def _check_build(entry, path, files):
    """``file``, ``format`` and (optional, default fp32) ``precision`` of one graph build."""
    rel = check_relative_path(_get(entry, "file", path, (str,)), path + ".file")
    if rel not in files:
        _fail(path + ".file", "'{}' is not listed in $.files (every file needs a sha256)".format(rel))
    fmt = _get(entry, "format", path, (str,))
    if fmt not in FORMATS:
        _fail(path + ".format", "'{}' is not a known format; accepted: {}".format(
            fmt, ", ".join(FORMATS)))
    precision = _get(entry, "precision", path, (str,), optional=True) or "fp32"
    if precision not in PRECISIONS:
        _fail(path + ".precision", "'{}' is not a known precision; accepted: {}".format(
            precision, ", ".join(PRECISIONS)))
    providers = _get(entry, "providers", path, (list, type(None)), optional=True)
    if providers is not None and (len(providers) > 16 or not all(
            isinstance(p, str) and _ID_TEXT.match(p) for p in providers)):
        _fail(path + ".providers", "expected up to 16 ONNX Runtime execution provider names")
    return rel, fmt, precision


def _check_builds(entry, path, files, selected):
    """The optional ``builds`` list: every build of this graph the bundle holds, one of
    which (the entry's own file) is the selected one. Builds of one format and precision
    differ by ``device`` (the board processor a compiled build is for)."""
    builds = _get(entry, "builds", path, (list, type(None)), optional=True)
    if builds is None:
        return
    seen = {}
    for i, b in enumerate(builds):
        p = "{}.builds[{}]".format(path, i)
        rel, fmt, precision = _check_build(b, p, files)
        device = _get(b, "device", p, (str,), optional=True)
        if device is not None and not _ID.match(device):
            _fail(p + ".device", "expected an id of [a-z0-9_.-], got '{}'".format(device))
        batch = _get(b, "batch", p, (int, type(None)), optional=True)
        if batch is not None and not 1 <= batch <= MAX_DIM:
            _fail(p + ".batch", "expected null (any batch) or an integer in 1..{}".format(MAX_DIM))
        if (fmt, precision, device) in seen:
            _fail(p, "a second {} {} build{}".format(
                fmt, precision, " for " + device if device else ""))
        seen[(fmt, precision, device)] = rel
    if (selected[1], selected[2]) not in [(f, pr) for (f, pr, _), r in seen.items()
                                          if r == selected[0]]:
        _fail(path + ".builds", "the selected build ({} {} '{}') must be one of the builds".format(
            selected[1], selected[2], selected[0]))


def _listed_file(entry, path, files):
    """The bundle-relative ``file`` of ``entry``, which must be listed (hashed) in $.files."""
    rel = check_relative_path(_get(entry, "file", path, (str,)), path + ".file")
    if rel not in files:
        _fail(path + ".file", "'{}' is not listed in $.files".format(rel))
    return rel


def _check_graph(entry, path, files):
    selected = _check_build(entry, path, files)
    _check_builds(entry, path, files, selected)
    _get(entry, "chosen_from", path, (dict,), optional=True)
    source = _get(entry, "qonnx", path, (dict,), optional=True)
    if source is not None:
        _listed_file(source, path + ".qonnx", files)
    for key in ("inputs", "outputs"):
        names = _get(entry, key, path, (list,))
        if not names or not all(isinstance(n, str) and n for n in names):
            _fail("{}.{}".format(path, key), "expected a non-empty list of tensor names")
    macs = _get(entry, "macs", path, (int,))
    if macs < 0:
        _fail(path + ".macs", "must be >= 0")
    _check_uncounted(entry, path)
    shapes = _get(entry, "output_shapes", path, (list,))
    if len(shapes) != len(entry["outputs"]):
        _fail(path + ".output_shapes", "expected one shape per output ({})".format(len(entry["outputs"])))
    for i, shape in enumerate(shapes):
        p = "{}.output_shapes[{}]".format(path, i)
        _check_shape(shape, p)
        if shape[0] is not None or None in shape[1:]:
            _fail(p, "expected a dynamic batch dimension (null) followed by fixed dimensions")


def _check_uncounted(entry, path):
    """Optional ``macs_uncounted``: the nodes left out of ``macs``, each
    ``{"node": name, "op": op type, "why": reason}`` (older manifests have no such key)."""
    nodes = _get(entry, "macs_uncounted", path, (list,), optional=True)
    for i, node in enumerate(nodes or []):
        p = "{}.macs_uncounted[{}]".format(path, i)
        for key in ("node", "op", "why"):
            if not _get(node, key, p, (str,)):
                _fail("{}.{}".format(p, key), "expected a non-empty string")


def _check_shape(shape, path):
    if not isinstance(shape, list) or not shape:
        _fail(path, "expected a non-empty list of dimensions")
    elements = 1
    for i, d in enumerate(shape):
        if d is None:
            continue
        if isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= MAX_DIM:
            _fail("{}[{}]".format(path, i), "expected null (dynamic) or an integer in 1..{}".format(MAX_DIM))
        elements *= d
    if elements > MAX_SAMPLE_ELEMENTS:
        _fail(path, "{} elements per sample; at most {} are accepted".format(
            elements, MAX_SAMPLE_ELEMENTS))


def _check_preprocessing(pre, path):
    if pre is None:
        return
    if not isinstance(pre, dict):
        _fail(path, "expected an object or null")
    scale = _number(pre, "scale", path)
    if scale <= 0:
        _fail(path + ".scale", "must be > 0")
    for key in ("mean", "std"):
        values = _get(pre, key, path, (list,))
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and _finite(v) for v in values):
            _fail("{}.{}".format(path, key), "expected a non-empty list of finite numbers")
    if any(v <= 0 for v in pre["std"]):
        _fail(path + ".std", "every std must be > 0")
    if len(pre["mean"]) != len(pre["std"]):
        _fail(path, "mean and std must have the same length")


def _check_statistics(stats, path, shape):
    """Per-channel statistics of the conversion data: four equal-length lists of finite
    numbers, one value per channel (axis 1 of a rank >= 3 input, else one)."""
    if stats is None:
        return
    _get(stats, "source", path, (str,))
    if _get(stats, "samples", path, (int,)) < 1:
        _fail(path + ".samples", "must be >= 1")
    channels = shape[1] if len(shape) >= 3 else 1
    for key in ("mean", "std", "min", "max"):
        values = _get(stats, key, path, (list,))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
                   for v in values):
            _fail("{}.{}".format(path, key), "expected a list of finite numbers")
        if len(values) != channels:
            _fail("{}.{}".format(path, key), "expected {} value(s), one per input channel, got "
                  "{}".format(channels, len(values)))
    if any(lo > hi for lo, hi in zip(stats["min"], stats["max"])):
        _fail(path, "min must not exceed max")


RESIZE_MODES = ("area", "linear", "nearest", "cubic")


def _check_side_graph(graph, path, files):
    """A graph a stage runs beside its own: a listed file, its tensor names and its other
    builds (TVM libraries), each a listed file."""
    _listed_file(graph, path, files)
    for names in ("inputs", "outputs"):
        values = _get(graph, names, path, (list,))
        if not values or not all(isinstance(v, str) and v for v in values):
            _fail("{}.{}".format(path, names), "expected a list of tensor names")
    for j, build in enumerate(_get(graph, "builds", path, (list,), optional=True) or []):
        bp = "{}.builds[{}]".format(path, j)
        _listed_file(build, bp, files)
        if _get(build, "format", bp, (str,)) not in FORMATS:
            _fail(bp + ".format", "expected one of {}".format(", ".join(FORMATS)))


def _check_gated(gated, path, files, outputs):
    """Gated blocks inside a stage: an entry graph, then per block a run and an optional skip
    graph with the same outputs, each block's graphs reading the previous graph's state (and
    shortcut, where it has one), and a skip threshold; the last block gives the stage's
    outputs."""
    _check_side_graph(_get(gated, "entry", path, (dict,)), path + ".entry", files)
    blocks = _get(gated, "blocks", path, (list,))
    if not blocks:
        _fail(path + ".blocks", "at least one gated block")
    before, seen = gated["entry"]["outputs"], set()
    for i, block in enumerate(blocks):
        bp = "{}.blocks[{}]".format(path, i)
        _check_side_graph(_get(block, "run", bp, (dict,)), bp + ".run", files)
        skip = _get(block, "skip", bp, (dict, type(None)))
        shortcut = _get(block, "shortcut", bp, (bool,))
        if len(before) != 2 + shortcut:
            _fail(bp, "the graph before this block gives {} tensors, expected its state, the "
                      "skip logit{}".format(len(before), " and the shortcut" if shortcut else ""))
        if block["run"]["inputs"] != [before[0]] + before[2:]:
            _fail(bp + ".run.inputs", "expected {}".format([before[0]] + before[2:]))
        if skip is None and i + 1 < len(blocks):
            _fail(bp + ".skip", "only the last block may lack a skip graph (its shortcut's "
                                "output is then the stage's)")
        if skip is not None:
            _check_side_graph(skip, bp + ".skip", files)
            if skip["inputs"] != [before[-1] if shortcut else before[0]] or \
                    skip["outputs"] != block["run"]["outputs"]:
                _fail(bp + ".skip", "a skip graph reads the shortcut's output and gives what "
                                    "the run graph gives")
        threshold = _number(block, "threshold", bp)
        if not 0 <= threshold <= 1:
            _fail(bp + ".threshold", "a skip probability in [0, 1]")
        index = _get(block, "block", bp, (int,), optional=True)   # among the model's blocks
        if index is not None:
            if index < 0 or index in seen:
                _fail(bp + ".block", "block indices are distinct and non-negative")
            seen.add(index)
        macs = _get(block, "macs", bp, (int,))
        if macs < 0:
            _fail(bp + ".macs", "expected a non-negative integer")
        before = block["run"]["outputs"]
    # Why profiling dropped all of the stage's gates, or some (their blocks run inside the
    # graph before them).
    _get(gated, "dropped", path, (dict, type(None)), optional=True)
    _get(gated, "dropped_gates", path, (dict,), optional=True)
    if before != outputs:
        _fail(path, "the last gated block gives {}, the stage's outputs are {}".format(
            before, outputs))


def _check_spatial(spatial, path, files):
    """A masked block's sparse execution: its masker and patch graphs, the region size, the
    halo and the threshold."""
    for key in ("masker", "patch"):
        _check_side_graph(_get(spatial, key, path, (dict,)), path + "." + key, files)
    for key in ("granularity", "halo"):
        value = _get(spatial, key, path, (int,))
        if not (1 if key == "granularity" else 0) <= value <= MAX_DIM:
            _fail(path + "." + key, "expected an integer in {}..{}".format(
                1 if key == "granularity" else 0, MAX_DIM))
    threshold = _number(spatial, "threshold", path)
    if not 0 < threshold < 1:
        _fail(path + ".threshold", "a keep probability in (0, 1)")


def _check_adaptive_stage(stage, path, files, index):
    """A stage's optional gate (layer skipping) and width variants (channel skipping)."""
    gate = _get(stage, "gate", path, (dict, type(None)), optional=True)
    if gate is not None:
        gp = path + ".gate"
        _listed_file(gate, gp, files)
        outputs = _get(gate, "outputs", gp, (list,))
        shapes = _get(gate, "output_shapes", gp, (list,))
        if len(outputs) != 1 or len(shapes) != 1 or not isinstance(shapes[0], list) or \
                shapes[0][1:] != [1]:
            _fail(gp, "a gate has one output of shape [N, 1] (a skip logit per sample)")
        threshold = _number(gate, "threshold", gp)
        if not 0 <= threshold <= 1:
            _fail(gp + ".threshold", "a skip probability in [0, 1]")
    spatial = _get(stage, "spatial", path, (dict, type(None)), optional=True)
    if spatial is not None:
        _check_spatial(spatial, path + ".spatial", files)
    gated = _get(stage, "gated", path, (dict, type(None)), optional=True)
    if gated is not None:
        _check_gated(gated, path + ".gated", files, stage.get("outputs"))
    widths = _get(stage, "widths", path, (dict, type(None)), optional=True)
    if widths is None:
        return
    wp = path + ".widths"
    variants = _get(widths, "variants", wp, (list,))
    if not variants:
        _fail(wp + ".variants", "at least one narrower variant")
    for j, v in enumerate(variants):
        vp = "{}.variants[{}]".format(wp, j)
        if not _ID.match(_get(v, "id", vp, (str,))):
            _fail(vp + ".id", "expected an id of [a-z0-9_.-]")
        _listed_file(v, vp, files)
        width = _number(v, "width", vp)
        if not 0 < width < 1:
            _fail(vp + ".width", "the fraction of the full width, in (0, 1)")
    router = _get(widths, "router", wp, (dict,))
    if _get(router, "name", wp + ".router", (str,)) == "graph":   # learned: reads the state
        _listed_file(router, wp + ".router", files)
        _get(router, "skip", wp + ".router", (bool,), optional=True)
        return
    _get(router, "bounds", wp + ".router", (list,))
    if index == 0:
        _fail(wp + ".router", "the first stage has no previous exit for a router to read")


def _check_cascade(cascade, files):
    """A resolution cascade: levels cheapest first, each a bundle inside this one (its
    manifest hashed here too) or this bundle itself (``"."``, the last level)."""
    if cascade is None:
        return
    p = "$.cascade"
    levels = _get(cascade, "levels", p, (list,))
    if len(levels) < 2:
        _fail(p + ".levels", "a cascade needs at least 2 levels, got {}".format(len(levels)))
    ids = set()
    for i, level in enumerate(levels):
        lp = "{}.levels[{}]".format(p, i)
        lid = _get(level, "id", lp, (str,))
        if not _ID.match(lid) or lid in ids:
            _fail(lp + ".id", "expected a unique id of [a-z0-9_.-], got '{}'".format(lid))
        ids.add(lid)
        rel = _get(level, "bundle", lp, (str,))
        if i == len(levels) - 1:
            if rel != ".":
                _fail(lp + ".bundle", "the last level is this bundle itself ('.')")
        elif check_relative_path(rel, lp + ".bundle") + "/manifest.json" not in files:
            _fail(lp + ".bundle", "'{}/manifest.json' is not listed in $.files".format(rel))
        size = _get(level, "resolution", lp, (list,))
        if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and
                                     1 <= d <= MAX_DIM for d in size) or \
                size[0] * size[1] > MAX_SAMPLE_ELEMENTS:
            _fail(lp + ".resolution", "expected [height, width] in 1..{}, at most {} pixels".format(
                MAX_DIM, MAX_SAMPLE_ELEMENTS))
        _get(level, "policy", lp, (str,))
        threshold = _number(level, "threshold", lp, allow_null=True)
        if i == len(levels) - 1 and threshold is not None:
            _fail(lp + ".threshold", "the last level answers for every sample left: null")
    pipe = _get(cascade, "pipeline", p, (dict,))
    if _get(pipe, "resize", p + ".pipeline", (str,)) not in RESIZE_MODES:
        _fail(p + ".pipeline.resize", "accepted: {}".format(", ".join(RESIZE_MODES)))
    crop = _number(pipe, "crop", p + ".pipeline", allow_null=True)
    if crop is not None and not 0 < crop <= 1:
        _fail(p + ".pipeline.crop", "the central fraction kept, in (0, 1], or null")


def _check_json_values(manifest):
    """Only JSON values, every number finite (``1e999`` parses to inf, which the digest cannot
    encode). Iterative: a deeply nested manifest must not exhaust the stack."""
    stack = [("$", manifest, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
            _fail(path, "nested deeper than {} levels".format(MAX_DEPTH))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    _fail(path, "object keys must be strings, got {}".format(type(k).__name__))
                stack.append(("{}.{}".format(path, k), v, depth + 1))
        elif isinstance(value, list):
            stack.extend(("{}[{}]".format(path, i), v, depth + 1) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            _fail(path, "must be a finite number (JSON has no NaN or infinity)")
        elif value is not None and not isinstance(value, (str, int, float)):
            _fail(path, "expected a JSON value, got {}".format(type(value).__name__))


def _check_memory(memory):
    """The device's memory and the activations one sample needs (both in bytes)."""
    if memory is None:
        return
    device = _get(memory, "device_bytes", "$.memory", (int, type(None)))
    if device is not None and device <= 0:
        _fail("$.memory.device_bytes", "must be > 0 (or null: the running machine's memory)")
    if _get(memory, "activation_bytes_per_sample", "$.memory", (int,)) < 0:
        _fail("$.memory.activation_bytes_per_sample", "must be >= 0")


def _check_signature(sig):
    """The shape of a signature record (whether it holds: :mod:`edgesdk.signing`)."""
    if sig is None:
        return
    for key, pattern in (("public_key", _SHA256), ("digest", _SHA256), ("value", _HEX128)):
        value = _get(sig, key, "$.signature", (str,))
        if not pattern.match(value):
            _fail("$.signature." + key, "expected lowercase hex digits of the right length")
    _get(sig, "algorithm", "$.signature", (str,))


def validate(manifest, sdk_schema=SCHEMA_VERSION):
    """Check the structure of a parsed manifest; raise ManifestError / SchemaVersionError.

    Checks types, ranges, identifiers, relative paths and cross references. File hashes are
    checked by :mod:`edgesdk.bundle`, which owns the directory.
    """
    if not isinstance(manifest, dict):
        _fail("$", "expected a JSON object at the top level")
    version = _get(manifest, "schema_version", "$", (int,))
    if version > sdk_schema:
        raise SchemaVersionError(
            "bundle schema_version {} was written by edgesdk {}; this edgesdk reads schema "
            "versions up to {}. Upgrade edgesdk on this machine (or the runtime copy on the "
            "device), or convert the model again with this version.".format(
                version, manifest.get("sdk_version", "?"), sdk_schema))
    if version < 1:
        _fail("$.schema_version", "must be >= 1")
    for key in ("sdk_version", "name", "target"):
        _get(manifest, key, "$", (str,))
    _get(manifest, "created", "$", (str,), optional=True)
    _get(manifest, "built_with", "$", (dict,))
    _get(manifest, "provenance", "$", (dict,))
    _get(manifest, "quantization", "$", (dict, type(None)), optional=True)
    _get(manifest, "tensorrt", "$", (dict,), optional=True)
    _get(manifest, "pruning", "$", (list,), optional=True)
    files = _get(manifest, "files", "$", (dict,))
    _check_files_table(files)

    inputs = _get(manifest, "inputs", "$", (list,))
    if len(inputs) != 1:
        _fail("$.inputs", "exactly one model input is supported, got {}".format(len(inputs)))
    for i, spec in enumerate(inputs):
        p = "$.inputs[{}]".format(i)
        _get(spec, "name", p, (str,))
        if _get(spec, "dtype", p, (str,)) not in DTYPES:
            _fail(p + ".dtype", "accepted: {}".format(", ".join(DTYPES)))
        _check_shape(_get(spec, "shape", p, (list,)), p + ".shape")
        _check_preprocessing(_get(spec, "preprocessing", p, (dict, type(None)), optional=True),
                             p + ".preprocessing")
        _check_statistics(_get(spec, "statistics", p, (dict, type(None)), optional=True),
                          p + ".statistics", spec["shape"])

    num_classes = _get(manifest, "num_classes", "$", (int,))
    if not 2 <= num_classes <= MAX_DIM:
        _fail("$.num_classes", "must be in 2..{}".format(MAX_DIM))
    names = _get(manifest, "class_names", "$", (list, type(None)), optional=True)
    if names is not None and (len(names) != num_classes or
                              not all(isinstance(n, str) for n in names)):
        _fail("$.class_names", "expected null or {} strings, one per class".format(num_classes))
    stages = _get(manifest, "stages", "$", (list,))
    exits = _get(manifest, "exits", "$", (list,))
    if not stages:
        _fail("$.stages", "at least one stage is required")
    ids = set()
    for i, st in enumerate(stages):
        p = "$.stages[{}]".format(i)
        sid = _get(st, "id", p, (str,))
        if not _ID.match(sid) or sid in ids:
            _fail(p + ".id", "expected a unique id of [a-z0-9_.-], got '{}'".format(sid))
        ids.add(sid)
        _check_graph(st, p, files)
        _check_adaptive_stage(st, p, files, i)
    if len(exits) != len(stages):
        _fail("$.exits", "expected one exit per stage ({}), got {}".format(len(stages), len(exits)))
    for i, ex in enumerate(exits):
        p = "$.exits[{}]".format(i)
        eid = _get(ex, "id", p, (str,))
        if not _ID.match(eid) or eid in ids:
            _fail(p + ".id", "expected a unique id of [a-z0-9_.-], got '{}'".format(eid))
        ids.add(eid)
        if _get(ex, "after_stage", p, (int,)) != i:
            _fail(p + ".after_stage", "exit {} must follow stage {}".format(i, i))
        _check_graph(ex, p, files)
        if ex["output_shapes"][0] != [None, num_classes]:
            _fail(p + ".output_shapes[0]", "an exit gives logits of shape [null, num_classes] "
                  "= [null, {}], got {}".format(num_classes, ex["output_shapes"][0]))
        _get(ex, "policy", p, (str,))
        threshold = _number(ex, "threshold", p, allow_null=True)
        _get(ex, "chosen_from", p, (dict,))
        if _get(ex, "dropped", p, (bool,), optional=True) and threshold is not None:
            _fail(p + ".threshold", "a dropped exit has no threshold (null)")
        if ex.get("dropped") and i == len(exits) - 1:
            _fail(p + ".dropped", "the final exit cannot be dropped")
    ref = _get(manifest, "reference", "$", (dict, type(None)), optional=True)
    if ref is not None:
        _listed_file(ref, "$.reference", files)
        for key in ("atol", "rtol"):
            if _number(ref, key, "$.reference") < 0:
                _fail("$.reference." + key, "must be >= 0")
    _check_cascade(_get(manifest, "cascade", "$", (dict, type(None)), optional=True), files)
    _check_memory(_get(manifest, "memory", "$", (dict, type(None)), optional=True))
    _check_signature(_get(manifest, "signature", "$", (dict,), optional=True))
    _check_json_values(manifest)
    digest = _get(manifest, "manifest_sha256", "$", (str,))
    if not _SHA256.match(digest):
        _fail("$.manifest_sha256", "expected 64 lowercase hex digits")
    return manifest
