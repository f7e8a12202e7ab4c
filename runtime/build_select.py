"""Which build of each graph runs: what this machine can run, and what the caller asked for.

A graph entry lists its builds (ONNX FP32 always; INT8/FP16 ONNX, TVM libraries, TensorRT
engines, HLS C simulations, bitstreams). The runtime runs the selected one unless the caller
names others (``builds=``, ``--builds``). A request that a graph cannot meet is an error naming
the builds it has: running another build silently would report figures of a build that did not
run. ``fallback=True`` (``--builds tvm,fallback``) keeps the selected build where a graph lacks
the requested one. Python 3.6 / numpy 1.19 compatible.
"""
import platform

from edgesdk.errors import BundleError, InputError
from edgesdk.manifest import FORMATS, PRECISIONS, entry_builds, precision_of

def why_not_here(build):
    """None when this machine can run ``build``, else the reason in a few words: its format's
    executor decides (:meth:`~.executors.base.Executor.available`)."""
    from edgesdk.runtime.executors import EXECUTORS
    return EXECUTORS.get(build["format"]).available(build)


def runs_here(build):
    """Whether this machine can run ``build`` (see :func:`why_not_here`)."""
    return why_not_here(build) is None


def _listed(entry):
    """Every build of ``entry`` as a record with a precision, the selected one first."""
    return [dict(b, precision=precision_of(b)) for b in entry_builds(entry)]


def graph_builds(entry):
    """The builds of a stage or head entry that this machine can run, each as its manifest
    record (at least ``file``, ``format``, ``precision``), the selected one first."""
    listed = _listed(entry)
    builds = [b for b in listed if runs_here(b)]
    if not builds:
        raise BundleError("graph '{}' has no build this machine ({}) can run; its builds: {}"
                          .format(entry["id"], platform.machine(), describe_builds(listed)))
    return builds


def build_name(build):
    """``"tvm fp32 (jetson-tx2 cpu)"``: a build in words (with the execution providers it
    ran on, where one is not the CPU's)."""
    where = " ".join(v for v in (build.get("device"), build.get("processor")) if v)
    providers = build.get("providers") or []
    via = " via " + ", ".join(providers) if any(p != "CPUExecutionProvider" for p in providers) \
        else ""
    return "{} {}{}{}".format(build["format"], precision_of(build),
                              " ({})".format(where) if where else "", via)


def describe_builds(builds):
    """The builds in words, each with why it cannot run here where it cannot."""
    out = []
    for b in builds:
        why = why_not_here(b)
        out.append(build_name(b) + ("" if why is None else " [not here: {}]".format(why)))
    return ", ".join(out)


def ran(build):
    """What :class:`~edgesdk.runtime.engine.RunResult` and the profiler record of a build."""
    return {"format": build["format"], "precision": precision_of(build),
            "processor": build.get("processor", "cpu"), "device": build.get("device"),
            "file": build["file"]}


def parse_request(text):
    """``--builds`` text -> ``(request, fallback)``: ``int8``, ``tvm``, ``onnx:fp32``, each
    optionally followed by ``,fallback``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    fallback = "fallback" in parts
    parts = [p for p in parts if p != "fallback"]
    if len(parts) != 1:
        raise InputError("--builds takes one build: a precision ({}), a format ({}) or "
                         "FORMAT:PRECISION, optionally followed by ',fallback'; got {!r}".format(
                             ", ".join(PRECISIONS), ", ".join(FORMATS), text))
    fmt, sep, precision = parts[0].partition(":")
    return ((fmt, precision) if sep else parts[0]), fallback


def _matcher(want):
    """A predicate on build records for one request, checked against the closed lists."""
    if isinstance(want, (tuple, list)):
        if len(want) != 2 or want[0] not in FORMATS or want[1] not in PRECISIONS:
            raise InputError("a (format, precision) build request needs a format of {} and a "
                             "precision of {}; got {!r}".format(", ".join(FORMATS),
                                                                ", ".join(PRECISIONS), want))
        return lambda b: (b["format"], b["precision"]) == tuple(want)
    if want in FORMATS:
        return lambda b: b["format"] == want
    if want in PRECISIONS:
        return lambda b: b["precision"] == want
    raise InputError("unknown build {!r}: give a format ({}), a precision ({}) or "
                     "FORMAT:PRECISION".format(want, ", ".join(FORMATS), ", ".join(PRECISIONS)))


def pick_build(entry, want, fallback=False):
    """The build of ``entry`` that ``want`` names: None (the selected one), a precision
    (``"int8"``), a format (``"tvm"``) or a ``(format, precision)`` pair. A graph without such
    a build that runs here is an error listing its builds, unless ``fallback`` (then the
    selected build runs)."""
    builds = graph_builds(entry)
    if want is None:
        return builds[0]
    match = _matcher(want)
    found = next((b for b in builds if match(b)), None)
    if found is not None:
        return found
    if fallback:
        return builds[0]
    wanted = ":".join(want) if isinstance(want, (tuple, list)) else want
    raise BundleError(
        "graph '{}' has no '{}' build that runs on this machine; its builds: {}. Run one of "
        "those, or allow the selected build where a graph lacks it: --builds {},fallback "
        "(builds=..., fallback=True)".format(entry["id"], wanted,
                                             describe_builds(_listed(entry)), wanted))
