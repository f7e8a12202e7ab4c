"""Boards described in a user's file: ``--target my-board.toml`` (or ``.json``), with the
fields of :class:`~edgesdk.targets.descriptor.Target` (processors as a list of tables with
the fields of :class:`~edgesdk.targets.descriptor.Processor`, ``fabric`` with those of
:class:`~edgesdk.targets.descriptor.Fabric`), checked field by field with the file and the
field named in every error."""
import dataclasses
import json
import os

from edgesdk.errors import InputError
from edgesdk.targets.descriptor import Fabric, Processor, Target

SUFFIXES = (".json", ".toml")
PRECISIONS = ("fp32", "fp16", "int8")
ARCHES = ("aarch64", "x86_64", "armv7l")
REQUIRED = ("name", "description", "arch", "precisions")


def is_board_file(name):
    """Whether ``--target`` names a board file rather than a built-in board."""
    return isinstance(name, str) and name.lower().endswith(SUFFIXES)


def _read(path):
    if not os.path.isfile(path):
        raise InputError("board file '{}' does not exist".format(path))
    try:
        if path.lower().endswith(".json"):
            with open(path) as f:
                return json.load(f)
        try:
            import tomllib
        except ImportError:   # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise InputError("reading TOML board files needs Python 3.11 or the tomli "
                                 "package; a .json board file works everywhere")
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (ValueError, OSError) as exc:   # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise InputError("board file '{}' cannot be read: {}".format(path, exc))


class _Checker(object):
    def __init__(self, path):
        self.path = path

    def fail(self, field, message):
        raise InputError("board file '{}': {}: {}".format(self.path, field, message))

    def fields(self, obj, cls, where, required=()):
        """``obj`` (a table) checked against the dataclass ``cls``'s fields."""
        if not isinstance(obj, dict):
            self.fail(where, "expected a table of fields, got {}".format(type(obj).__name__))
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(obj) - set(known))
        if unknown:
            self.fail(where, "unknown field(s) {}; a {} has {}".format(
                ", ".join(unknown), cls.__name__, ", ".join(known)))
        missing = [k for k in required if k not in obj]
        if missing:
            self.fail(where, "missing required field(s) {}".format(", ".join(missing)))
        return dict(obj)

    def text(self, obj, key, where, optional=False, choices=None):
        value = obj.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            self.fail(where + "." + key, "expected a non-empty string")
        if choices is not None and value not in choices:
            self.fail(where + "." + key, "expected one of {}, got {!r}".format(
                ", ".join(choices), value))
        return value

    def texts(self, obj, key, where, choices=None):
        value = obj.get(key)
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) for v in value):
            self.fail(where + "." + key, "expected a non-empty list of strings")
        bad = [v for v in value if choices is not None and v not in choices]
        if bad:
            self.fail(where + "." + key, "unknown {}; expected some of {}".format(
                ", ".join(bad), ", ".join(choices)))
        return tuple(value)

    def number(self, obj, key, where, kind=int, low=1):
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float
                                                     else int) or value < low:
            self.fail(where + "." + key, "expected {} >= {}, got {!r}".format(
                "a number" if kind is float else "an integer", low, value))
        return value


def load_target(path):
    """The :class:`Target` a board file describes (see the module docstring)."""
    from edgesdk.backends import TOOLCHAIN_FORMATS
    from edgesdk.targets import TARGETS
    c = _Checker(path)
    board = c.fields(_read(path), Target, "board", REQUIRED)
    name = c.text(board, "name", "board")
    if name in TARGETS.names():
        c.fail("board.name", "'{}' is a built-in board; give yours another name".format(name))
    c.text(board, "description", "board")
    c.text(board, "arch", "board", choices=ARCHES)
    board["precisions"] = c.texts(board, "precisions", "board", PRECISIONS)
    if "fp32" not in board["precisions"]:
        c.fail("board.precisions", "must include fp32 (every bundle has FP32 graphs)")
    if "default_precision" in board:
        c.text(board, "default_precision", "board", choices=board["precisions"])
    board["toolchains"] = c.texts(board, "toolchains", "board", sorted(TOOLCHAIN_FORMATS)) \
        if "toolchains" in board else ("onnxruntime",)
    if "onnxruntime" not in board["toolchains"]:
        c.fail("board.toolchains", "must include onnxruntime (the runtime's default executor)")
    c.text(board, "os", "board", optional=True, choices=("linux", "android"))
    c.text(board, "int8_activations", "board", optional=True,
           choices=("uint8", "int8-symmetric"))
    c.text(board, "glibc", "board", optional=True)
    for key in ("memory_mb", "max_opset"):
        c.number(board, key, "board")
    if "tensorrt" in board["toolchains"]:   # the release's operator table is checked at build
        board["tensorrt"] = c.text(board, "tensorrt", "board")
    processors = board.get("processors", [])
    if not isinstance(processors, list):
        c.fail("board.processors", "expected a list of processor tables")
    board["processors"] = tuple(_processor(c, p, "board.processors[{}]".format(i))
                                for i, p in enumerate(processors))
    if "tvm" in board["toolchains"] and not board["processors"]:
        c.fail("board.processors", "a board with the tvm toolchain needs at least one processor")
    if "fabric" in board:
        fabric = c.fields(board["fabric"], Fabric, "board.fabric",
                          ("part", "clock_mhz", "dsp", "bram_18k", "lut", "ff"))
        c.number(fabric, "clock_mhz", "board.fabric", float, 1)
        for key in ("dsp", "bram_18k", "lut", "ff"):
            c.number(fabric, key, "board.fabric", int, 0)
        board["fabric"] = Fabric(**fabric)
    elif "hls4ml" in board["toolchains"]:
        c.fail("board.fabric", "a board with the hls4ml toolchain needs its fabric")
    providers = board.get("onnxruntime_providers", {})
    if not isinstance(providers, dict) or not all(
            p in PRECISIONS and isinstance(v, list) and all(isinstance(n, str) for n in v)
            for p, v in providers.items()):
        c.fail("board.onnxruntime_providers", "expected precision = [provider names]")
    for key, kind in (("build_on", dict), ("slow_precisions", dict), ("notes", list)):
        if key in board and not isinstance(board[key], kind):
            c.fail("board." + key, "expected a {}".format("table" if kind is dict else "list"))
    return Target(**board)


def _processor(c, obj, where):
    proc = c.fields(obj, Processor, where, ("name", "description", "tvm_target", "arch"))
    c.text(proc, "name", where)
    c.text(proc, "description", where)
    c.text(proc, "arch", where, choices=ARCHES)
    if not isinstance(proc["tvm_target"], dict) or "kind" not in proc["tvm_target"] and \
            "tag" not in proc["tvm_target"]:
        c.fail(where + ".tvm_target", "expected a TVM target as a table with a kind (llvm, "
                                      "cuda, opencl) or a tag")
    c.text(proc, "kernels", where, optional=True, choices=("cuda", "opencl"))
    c.text(proc, "artifact", where, optional=True, choices=("shared-library", "object-archive"))
    return Processor(**proc)


# How a TVM target begins: a target string (``llvm -mtriple=... -mcpu=...``), a JSON dict
# (``{"kind": "llvm", ...}``) or a tag (``nvidia/jetson-orin-nano``).
TVM_KINDS = ("llvm", "cuda", "opencl")
TVM_TAG_PREFIXES = ("nvidia/", "arm_cpu/", "qcom/", "raspberry-pi/")


def is_tvm_target(name):
    """Whether ``--target`` is a TVM target rather than a board."""
    return isinstance(name, str) and (name.split(" ", 1)[0] in TVM_KINDS or
                                      name.lstrip().startswith("{") or
                                      name.startswith(TVM_TAG_PREFIXES))


def parse_tvm_target(text):
    """A TVM target as TVM 0.27 takes it: a dict from a JSON dict or from the target-string
    form TVM no longer parses itself (``llvm -mtriple=aarch64-linux-gnu -mattr=+neon,+dotprod
    -num-cores=4``: ``mattr`` and ``keys`` become lists, integers integers), or a tag as it
    is."""
    if text.startswith(TVM_TAG_PREFIXES):
        return text
    if text.lstrip().startswith("{"):
        try:
            target = json.loads(text)
        except ValueError as exc:
            raise InputError("--target '{}' is not a JSON dict: {}".format(text, exc))
        if not isinstance(target, dict) or "kind" not in target:
            raise InputError("a TVM target dict needs a kind, got '{}'".format(text))
        return target
    parts = text.split()
    target = {"kind": parts[0]}
    for part in parts[1:]:
        key, eq, value = part.lstrip("-").partition("=")
        if not part.startswith("-") or not eq or not key:
            raise InputError("--target '{}': '{}' is not -key=value".format(text, part))
        target[key] = value.split(",") if key in ("mattr", "keys") else \
            int(value) if value.isdigit() else value
    return target


def tvm_target_board(text):
    """A board for TVM builds only, from a TVM target (see :func:`parse_tvm_target`): one
    processor (``cpu`` for ``llvm``, else ``gpu`` with CUDA or OpenCL kernels), the
    architecture from the ``mtriple`` (the host's for a GPU; ``aarch64`` for Jetson tags;
    this machine's without one), named ``tvm-`` and a hash of the text (its builds' folder).
    Nothing else is known of such a board: no C library floor, memory or power sensor."""
    import hashlib
    import platform
    from edgesdk.targets.boards import AARCH64_GNU, AARCH64_PACKAGE
    target = parse_tvm_target(text)
    if isinstance(target, str):   # a tag
        kind, triple = "cuda" if target.startswith("nvidia/") else "llvm", \
            "aarch64" if "jetson" in target else ""
    else:
        kind = target["kind"]
        triple = target.get("mtriple") or (target.get("host") or {}).get("mtriple") or ""
    arch = "aarch64" if triple.startswith("aarch64") else "armv7l" if triple.startswith("arm") \
        else "x86_64" if triple.startswith("x86_64") else platform.machine()
    gpu = kind != "llvm"
    cross = arch == "aarch64" and platform.machine() != "aarch64"
    proc = Processor(name="gpu" if gpu else "cpu", description="TVM target " + text,
                     tvm_target=target, arch=arch,
                     kernels=("opencl" if kind == "opencl" else "cuda") if gpu else None,
                     cross_compiler=AARCH64_GNU if cross else None,
                     cross_package=AARCH64_PACKAGE if cross else None,
                     device_build="compile the kernel source for the board's GPU there "
                                  "(nvcc -ptx for CUDA; the OpenCL driver at load time)"
                     if gpu else None)
    return Target(name="tvm-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8],
                  description="a board given as the TVM target '{}'".format(text), arch=arch,
                  precisions=("fp32", "fp16", "int8"), toolchains=("onnxruntime", "tvm"),
                  build_on={"onnxruntime": "host", "tvm": "host"}, processors=(proc,),
                  notes=["given as a TVM target: no C library floor, memory or power sensor "
                         "is known; describe the board in a file for those"])
