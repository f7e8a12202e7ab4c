"""FPGA C-simulation executor: runs a stage or head built by ``edgesdk build --toolchain
hls4ml`` through hls4ml's bit-accurate C simulation, compiled into a shared library.

The library's ``NAME_float(in..., out...)`` takes one sample at a time as flat float32
arrays in the HLS graph's layout (NHWC feature maps; the fixed-point conversion happens
inside, exactly as on the fabric). The executor transposes between the runtime's NCHW states
and that layout on the CPU, as the board's ARM cores would around the DMA transfers, and the
early-exit decision between stages stays on the CPU. Needs only ctypes and numpy (no hls4ml).
Python 3.6 compatible.
"""
import ctypes

import numpy as np
from numpy import ctypeslib

from edgesdk.errors import BundleError
from edgesdk.runtime.executors.base import Executor
from edgesdk.verified import loadable_path


def hls_layout(array, layout):
    """A batch in the layout one HLS port takes, flattened per sample."""
    array = np.asarray(array, dtype=np.float32)
    if layout == "NHWC" and array.ndim == 4:
        array = array.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(array.reshape(len(array), -1))


def hls_output_sizes(hls, output_shapes, path):
    """Elements per sample of each HLS output, which must be those of the manifest's output
    shape (validated and bounded): the executors allocate buffers of this size."""
    sizes = []
    for i, (hls_shape, shape) in enumerate(zip(hls["output_shapes"], output_shapes)):
        size, want = 1, 1
        for d in hls_shape:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise BundleError("'{}': HLS output {} has shape {}; expected positive "
                                  "integers".format(path, i, hls_shape))
            size *= d
        for d in shape[1:]:
            want *= d
        if size != want:
            raise BundleError("'{}': HLS output {} has {} elements per sample, the manifest's "
                              "output shape {} has {}".format(path, i, size, shape, want))
        sizes.append(size)
    return sizes


def from_hls_layout(flat, layout, hls_shape, shape):
    """One HLS port's outputs back in the runtime's layout (NCHW feature maps)."""
    n = len(flat)
    if layout == "NHWC" and len(hls_shape) == 3:
        return np.ascontiguousarray(flat.reshape((n,) + tuple(hls_shape)).transpose(0, 3, 1, 2))
    return flat.reshape((n,) + tuple(d for d in shape[1:]))


class FpgaCsimGraph(Executor):
    """One HLS graph's C simulation; tensors by position, as the manifest lists them."""

    def __init__(self, path, input_names, output_names, output_shapes=None, threads=None,
                 build=None):
        hls = (build or {}).get("hls")
        if not hls:
            raise BundleError("'{}' has no HLS record (function, layouts, shapes) in the "
                              "manifest".format(path))
        try:
            with loadable_path(path) as local:
                self.lib = ctypes.CDLL(local)
            fn = getattr(self.lib, hls["function"])
        except (OSError, AttributeError) as exc:
            raise BundleError("cannot load the C simulation '{}': {}. It is built for the "
                              "machine that ran `edgesdk build --toolchain hls4ml`".format(path, exc))
        ports = len(hls["input_shapes"]) + len(hls["output_shapes"])
        if len(hls["input_shapes"]) != len(input_names) or \
                len(hls["output_shapes"]) != len(output_names):
            raise BundleError("'{}' has {} inputs / {} outputs, the manifest says {} / {}".format(
                path, len(hls["input_shapes"]), len(hls["output_shapes"]), len(input_names),
                len(output_names)))
        fn.restype = None
        fn.argtypes = [ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")] * ports
        self.fn = fn
        self.hls = hls
        self.output_shapes = output_shapes
        self.out_sizes = hls_output_sizes(hls, output_shapes, path)

    def run(self, tensors):
        """Run each sample through the simulation; returns a list of float32 arrays."""
        ins = [hls_layout(t, lay) for t, lay in zip(tensors, self.hls["input_layout"])]
        n = len(ins[0])
        outs = [np.empty((n, size), dtype=np.float32) for size in self.out_sizes]
        for i in range(n):
            self.fn(*([a[i] for a in ins] + [o[i] for o in outs]))
        return [from_hls_layout(o, lay, hs, s) for o, lay, hs, s in zip(
            outs, self.hls["output_layout"], self.hls["output_shapes"], self.output_shapes)]
