"""Driving hls4ml: the module, its conversion of one graph for a board, prediction through
the compiled C simulation, and the layers it cannot take.
"""
import contextlib
import io
import os

from edgesdk.deps import require
from edgesdk.errors import BuildError


def hls4ml_module():
    """The hls4ml package (``fpga`` extra)."""
    return require("hls4ml", "fpga", "build HLS projects")


def silently(fn, *args, **kwargs):
    """hls4ml prints its topology and compiler output to stdout; keep it out of the CLI."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def choose_io_type(mw, head):
    """Stages with convolutions stream their feature maps; heads (pooling and a dense layer
    on a small map) and dense-only graphs run in parallel."""
    if head or not any(n.op_type == "Conv" for n in mw.graph.node):
        return "io_parallel"
    return "io_stream"


def convert_graph(hls4ml, mw, cfg, out_dir, board, io_type, name):
    """hls4ml's model for ``mw`` with ``cfg``; hls4ml's errors become BuildError."""
    fabric = board.fabric
    try:
        return silently(
            hls4ml.converters.convert_from_onnx_model,
            mw, hls_config=cfg, output_dir=out_dir, project_name=name,
            backend=fabric.hls_backend, io_type=io_type, part=fabric.part,
            clock_period=round(1000.0 / fabric.clock_mhz, 3), write_weights_txt=False)
    except Exception as exc:  # hls4ml raises plain Exceptions
        raise BuildError("hls4ml could not convert {}: {}".format(name, exc))


def predict(hm, arrays):
    out = silently(hm.predict, arrays[0] if len(arrays) == 1 else arrays)
    return out if isinstance(out, list) else [out]


def unoptimized(hm):
    """Compile ``hm`` at -O0: the trace build runs once on a few hundred samples, and g++ at
    -O3 spends minutes on hls4ml's unrolled templates with large weight arrays."""
    write = hm.write

    def write_then_patch():
        write()
        script = os.path.join(hm.config.get_output_dir(), "build_lib.sh")
        with open(script) as f:
            text = f.read()
        with open(script, "w") as f:
            f.write(text.replace('CFLAGS="-O3 ', 'CFLAGS="-O0 '))
    hm.write = write_then_patch


def unsupported_layers(graphs):
    """``[(graph id, message)]`` for every graph hls4ml refuses to configure."""
    hls4ml = hls4ml_module()
    found = []
    for gid, mw in graphs.items():
        try:
            silently(hls4ml.utils.config_from_onnx_model, mw, granularity="name",
                      backend="Vitis")
        except Exception as exc:
            found.append((gid, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return found
