"""The board descriptor records: a board (:class:`Target`) and its processors
(:class:`Processor`)."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Processor:
    """One processor of a board that TVM can compile for.

    ``tvm_target``: the TVM target as a dict (TVM 0.27 takes dicts; a ``host`` key nests the
    CPU target of a GPU); ``None`` values are filled in at build time from the machine that
    builds (only the ``host`` board does this). ``kernels``: ``None`` for CPU code, else the
    kernel language (``cuda``, ``opencl``) of the device module. ``artifact``:
    ``shared-library`` (a .so the runtime loads) or ``object-archive`` (a .tar of object files
    the user links, e.g. with the Android NDK). ``cross_compiler``: the C++ compiler that
    links the artifact (``None``: this machine's own ``g++``). ``device_build``: what must
    still happen on the device, where kernels cannot be compiled on the host.
    """

    name: str
    description: str
    tvm_target: dict
    arch: str
    kernels: str = None
    artifact: str = "shared-library"
    cross_compiler: str = None
    cross_package: str = None
    device_build: str = None


@dataclass(frozen=True)
class Fabric:
    """The programmable logic of an FPGA board: the part, the design clock edgesdk estimates
    with, the resources a design may use, and the HLS backend hls4ml writes for."""

    part: str
    clock_mhz: float
    dsp: int
    bram_18k: int
    lut: int
    ff: int
    hls_backend: str = "Vitis"

    def budget(self):
        """The resources as a dict (what estimates are compared with)."""
        return {"dsp": self.dsp, "bram_18k": self.bram_18k, "lut": self.lut, "ff": self.ff}


@dataclass(frozen=True)
class Target:
    """What a board runs. ``formats`` (derived from ``toolchains``): the graph formats of the
    builds made for it; ``max_opset``: the highest ONNX opset its ONNX consumers read (None: no
    limit beyond the exporter's).

    Precision rules: ``precisions`` the board can run; ``default_precision`` what a
    conversion selects when none is asked for; ``slow_precisions`` those it runs but not fast
    (precision -> why; asking for one warns); ``int8_activations``: ``uint8`` (asymmetric,
    ONNX Runtime's fast x86/ARM path) or ``int8-symmetric`` (every Q/DQ zero point 0, as
    TensorRT requires); ``int8_no_bool``: INT8 graphs may hold no bool tensors (TensorRT).

    Toolchains: ``toolchains`` that produce builds for it (``onnxruntime``, ``tvm``,
    ``tensorrt``, ``hls4ml``: :data:`edgesdk.backends.TOOLCHAIN_FORMATS`); ``processors`` TVM compiles for; ``os`` (``linux``/``android``) and
    ``glibc``: the oldest C library its system ships (a build may need no newer symbol
    version); ``build_on``: toolchain -> where its builds are made (``host``, ``device``).

    ``memory_mb``: the board's RAM in MiB (shared with its GPU where it has one), recorded in
    bundles so the runtime refuses a bundle or a batch that cannot fit before loading it;
    ``None``: the memory of whichever machine runs the bundle.

    ``onnxruntime_providers``: precision -> the ONNX Runtime execution providers the board's
    onnxruntime builds carry, preferred first; recorded in each ONNX build of that precision,
    and at load the runtime uses those the installed onnxruntime has (the CPU's last).
    """

    name: str
    description: str
    arch: str
    precisions: tuple
    build_on: dict = field(default_factory=lambda: {"onnxruntime": "host"})
    power_sensor: str = "none"
    max_opset: int = None
    default_precision: str = "fp32"
    slow_precisions: dict = field(default_factory=dict)
    int8_activations: str = "uint8"
    int8_no_bool: bool = False
    toolchains: tuple = ("onnxruntime",)
    processors: tuple = ()
    os: str = "linux"
    glibc: str = None
    tensorrt: str = None
    fabric: Fabric = None
    memory_mb: int = None
    onnxruntime_providers: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def formats(self):
        """The graph formats of the builds its toolchains make."""
        from edgesdk.backends import formats_of
        return formats_of(self.toolchains)

    def precision_rules(self):
        """The rules as a JSON-able dict (what the manifest records)."""
        return {"target": self.name, "precisions": list(self.precisions),
                "default": self.default_precision, "slow": dict(self.slow_precisions),
                "int8_activations": self.int8_activations, "int8_no_bool": self.int8_no_bool}

    def processor(self, name):
        """The :class:`Processor` called ``name`` (``cpu``, ``gpu``)."""
        from edgesdk.errors import UnknownNameError
        for p in self.processors:
            if p.name == name:
                return p
        raise UnknownNameError("target '{}' has no processor '{}'; it has: {}".format(
            self.name, name, ", ".join(p.name for p in self.processors) or "none for TVM"))

    def describe(self):
        """A JSON-able summary (what ``edgesdk targets --json`` prints)."""
        return {"name": self.name, "description": self.description, "arch": self.arch,
                "os": self.os, "glibc": self.glibc, "toolchains": list(self.toolchains),
                "formats": list(self.formats), "precisions": list(self.precisions),
                "default_precision": self.default_precision, "build_on": dict(self.build_on),
                "power_sensor": self.power_sensor, "max_opset": self.max_opset,
                "tensorrt": self.tensorrt, "memory_mb": self.memory_mb,
                "fabric": None if self.fabric is None else dict(
                    self.fabric.budget(), part=self.fabric.part, clock_mhz=self.fabric.clock_mhz,
                    hls_backend=self.fabric.hls_backend),
                "processors": [{"name": p.name, "description": p.description,
                                "arch": p.arch, "tvm_target": p.tvm_target,
                                "kernels": p.kernels, "artifact": p.artifact,
                                "cross_compiler": p.cross_compiler,
                                "device_build": p.device_build} for p in self.processors],
                "notes": list(self.notes)}
