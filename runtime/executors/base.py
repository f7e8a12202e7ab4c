"""The executor contract: what the engine asks of every graph file format.

An executor class loads one graph file of its format for one build and runs it on a list of
arrays fed by position. The engine reads only what is defined here:

- ``available(build)``: None when this machine can run ``build``, else the reason in a few
  words (a file check: deciding what runs imports no toolkit);
- the constructor ``(path, input_names, output_names, output_shapes, threads, build)``: load;
- ``run(tensors)``: a list of new output arrays;
- ``thread_safe``: whether ``run`` may be called from several threads at once (the engine
  serializes the others);
- ``device_arrays``: whether ``run`` takes and returns arrays in device memory, and
  ``to_host(array)`` to copy one back (identity for host arrays);
- ``close()``: give the loaded graph's resources back;
- ``steady_memory()``: from now on keep no memory pools that never shrink (services call it
  through :func:`edgesdk.runtime.memory.steady_memory`);
- ``layer_times(tensors, calls)``: the graph run ``calls`` times on ``tensors`` with its
  format's own per-node timing, ``[(node, op type, total ms over the calls, runs)]``, or
  None where the format has none (``edgesdk profile --per-layer``).

Python 3.6 compatible.
"""
import os
import platform

# Device nodes that show a GPU's or an FPGA's driver is present (Jetson, desktop NVIDIA,
# Adreno, Zynq fabric).
CUDA_NODES = ("/dev/nvhost-ctrl", "/dev/nvidia0")
OPENCL_NODES = ("/dev/kgsl-3d0",)
FPGA_NODES = ("/sys/class/fpga_manager/fpga0", "/dev/xlnk")
KERNEL_NODES = {"cuda": CUDA_NODES, "opencl": OPENCL_NODES}


class Executor(object):
    """Base class of the executors (see the module docstring)."""

    thread_safe = False
    device_arrays = False
    # Files whose presence shows the driver of the device a non-CPU build needs.
    device_nodes = ()
    device_kind = None   # what the device is, in a word, for the reason a build cannot run
    # Peak activation bytes per sample recomputed from the loaded graph (ONNX graphs, see
    # :mod:`..activation_memory`); None where the format cannot be read (compiled code, whose
    # integrity the hashes and signature cover).
    activation_bytes = None

    def layer_times(self, tensors, calls):
        """Per-node times (see the module docstring); None: this format has no such timing."""
        return None

    @classmethod
    def available(cls, build):
        """None when this machine can run ``build``, else why not. Builds without an ``arch``
        (ONNX graphs) run everywhere; compiled builds need this machine's CPU architecture
        and a loadable artifact; builds for another processor than the CPU the device's
        driver (:meth:`device_nodes_for`)."""
        if build.get("arch") is None:
            return None
        if build["arch"] != platform.machine():
            return "built for {}, this machine is {}".format(build["arch"], platform.machine())
        if build.get("artifact", "shared-library") not in ("shared-library", "engine", "bitstream"):
            return "a {} to link into an application, not a loadable library".format(
                build["artifact"])
        if build.get("processor", "cpu") == "cpu":
            return None
        kind, nodes = cls.device_nodes_for(build)
        if any(os.path.exists(p) for p in nodes):
            return None
        return "needs a {} device ({} not found)".format(
            kind or build.get("processor"), " or ".join(nodes) or "no driver known")

    @classmethod
    def companions(cls, build):
        """Bundle files the loader of ``build`` reads beside its own file, by name (checked
        and copied with it; none by default)."""
        return ()

    @classmethod
    def device_nodes_for(cls, build):
        """``(device kind, files)`` that show the driver ``build`` needs is present."""
        return cls.device_kind, cls.device_nodes

    @staticmethod
    def to_host(array):
        """``array`` as a host numpy array (this executor's outputs already are)."""
        return array

    def close(self):
        """Give the graph's resources back (the base class holds none)."""

    @classmethod
    def steady_memory(cls):
        """Graphs loaded from now on keep no memory pool that never gives memory back (the
        base class keeps none)."""
