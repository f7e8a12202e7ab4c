"""The one table of backends: graph formats with their executors, and the toolchains that make
them. The manifest's formats (:data:`FORMATS`), the JSON schema's format enum (tested against
it), the executors the runtime loads, ``edgesdk build --toolchain``'s choices and its help are
all read from here; adding a backend is one line in each table (see docs/backends.md).

Import strings only: reading this module imports no executor or toolchain. Python 3.6
compatible (the device runtime reads it).
"""
from edgesdk.registry import Registry

# graph format -> executor class (runtime/executors/, subclasses of executors.base.Executor)
_EXECUTORS = (
    ("onnx", "edgesdk.runtime.executors.ort:OrtGraph"),
    ("tvm", "edgesdk.runtime.executors.tvm:TvmGraph"),
    ("tensorrt", "edgesdk.runtime.executors.tensorrt:TensorRTGraph"),
    ("fpga-csim", "edgesdk.runtime.executors.fpga_csim:FpgaCsimGraph"),
    ("pynq", "edgesdk.runtime.executors.pynq:PynqGraph"),
)
EXECUTORS = Registry("graph format", dict(_EXECUTORS))
# Every format a manifest may name, in the table's order (messages list them so).
FORMATS = tuple(name for name, _ in _EXECUTORS)

# toolchain -> the formats of the builds it makes (a board descriptor names its toolchains;
# its formats follow). onnxruntime's ONNX graphs are written by `convert` itself.
TOOLCHAIN_FORMATS = {"onnxruntime": ("onnx",), "tvm": ("tvm",), "tensorrt": ("tensorrt",),
                     "hls4ml": ("fpga-csim", "pynq")}

# `edgesdk build --toolchain NAME` -> (its class, a subclass of converters.toolchain.Toolchain;
# what it does, for the help without importing it): the toolchains with a build step.
TOOLCHAINS = (
    ("tvm", "edgesdk.converters.tvm.toolchain:TvmToolchain",
     "compile for a board processor with TVM (CPU libraries, CUDA or OpenCL kernels)"),
    ("tensorrt", "edgesdk.converters.tensorrt.toolchain:TensorRTToolchain",
     "check every graph against the board's TensorRT and write the TensorRT plan (engines "
     "with --on-device)"),
    ("hls4ml", "edgesdk.converters.hls4ml.toolchain:Hls4mlToolchain",
     "write HLS projects and bit-accurate C simulations for a Zynq board"),
)
BUILD_TOOLCHAINS = Registry("toolchain", dict((name, cls) for name, cls, _ in TOOLCHAINS))
TOOLCHAIN_NAMES = tuple(name for name, _, _ in TOOLCHAINS)


def toolchains_help():
    """One line per toolchain, for ``edgesdk build``'s help."""
    return "; ".join("{}: {}".format(name, what) for name, _, what in TOOLCHAINS)


def formats_of(toolchains):
    """The graph formats the builds of ``toolchains`` have, in the formats table's order."""
    made = {f for name in toolchains for f in TOOLCHAIN_FORMATS[name]}
    return tuple(f for f in FORMATS if f in made)
