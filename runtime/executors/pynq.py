"""PYNQ executor: runs a stage or head on the FPGA of a Zynq board through a bitstream built
with Vitis from the HLS project edgesdk wrote (hls4ml's accelerator wrapper: one AXI-stream
in, one out, float32 on the wire, fed by an AXI DMA), registered with
:func:`edgesdk.converters.hls4ml.build.register_bitstreams`.

Same contract and layouts as the C-simulation executor: NCHW states are turned into the HLS
layout on the ARM cores, the whole batch is streamed through the DMA in one transfer, and the
early-exit decision between stages runs on the CPU. Needs the ``pynq`` package of the board's
PYNQ image. Python 3.6 compatible.
"""
import numpy as np

from edgesdk.errors import BundleError, MissingDependencyError
from edgesdk.runtime.executors.base import FPGA_NODES, Executor
from edgesdk.runtime.executors.fpga_csim import from_hls_layout, hls_layout, hls_output_sizes
from edgesdk.verified import VerifiedFile


class PynqGraph(Executor):
    """One graph's bitstream, loaded as a PYNQ overlay."""

    device_kind, device_nodes = "fpga", FPGA_NODES

    @classmethod
    def companions(cls, build):
        """The hardware handoff file PYNQ reads beside the bitstream."""
        return (build["file"][:-len(".bit")] + ".hwh",)

    def close(self):
        if self._source is not None:
            self._source.close()

    def __init__(self, path, input_names, output_names, output_shapes=None, threads=None,
                 build=None):
        try:
            import pynq
        except ImportError as exc:
            raise MissingDependencyError("FPGA bitstreams run through PYNQ, which the board's "
                                         "PYNQ image provides ({})".format(exc))
        hls = (build or {}).get("hls") or {}
        if len(hls.get("input_shapes", [])) != 1 or len(hls.get("output_shapes", [])) != 1:
            raise BundleError("'{}': the PYNQ executor streams one input and one output; the "
                              "manifest records {} / {}".format(
                                  path, len(hls.get("input_shapes", [])),
                                  len(hls.get("output_shapes", []))))
        self.pynq = pynq
        # PYNQ reads the .hwh beside the bitstream and may download it again: a private
        # copy of both, checked, kept while this executor lives.
        self._source = path if isinstance(path, VerifiedFile) else None
        self.overlay = pynq.Overlay(path.private_path(named=True) if self._source else path)
        dma = ((build or {}).get("pynq") or {}).get("dma", "axi_dma_0")
        if not hasattr(self.overlay, dma):
            raise BundleError("the overlay '{}' has no DMA '{}'".format(path, dma))
        self.dma = getattr(self.overlay, dma)
        self.hls = hls
        self.output_shapes = output_shapes
        self.out_size = hls_output_sizes(hls, output_shapes, path)[0]

    def run(self, tensors):
        """Stream the batch through the fabric; returns a list with one float32 array."""
        x = hls_layout(tensors[0], self.hls["input_layout"][0])
        n = len(x)
        ibuf = self.pynq.allocate(shape=x.shape, dtype=np.float32)
        obuf = self.pynq.allocate(shape=(n, self.out_size), dtype=np.float32)
        try:
            ibuf[:] = x
            self.dma.sendchannel.transfer(ibuf)
            self.dma.recvchannel.transfer(obuf)
            self.dma.sendchannel.wait()
            self.dma.recvchannel.wait()
            out = np.array(obuf, dtype=np.float32)
        finally:
            ibuf.freebuffer()
            obuf.freebuffer()
        return [from_hls_layout(out, self.hls["output_layout"][0], self.hls["output_shapes"][0],
                                self.output_shapes[0])]
