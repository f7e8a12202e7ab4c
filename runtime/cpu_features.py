"""The CPU's model and the instruction-set features that change which kernels run (and, for
INT8, the results): read from ``/proc/cpuinfo`` once per file.

One CPU model name can cover machines with different kernels: two 2-core "AMD EPYC" cloud
machines measured for edgesdk, one with AVX2 only and one with AVX-512 VNNI, ran a
ResNet-18-sized INT8 model at 0.95x and 2.8x its FP32 speed. So profiles identify a device
by its features too, and benchmarks print them.
Python 3.6 compatible.
"""
import platform

# The features that select kernels: x86 vector widths, integer dot products (VNNI, AMX) and
# bfloat16; Arm's NEON (asimd), dot product (asimddp), int8 matrix multiply (i8mm), SVE.
KERNEL_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                   "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp",
                   "i8mm", "bf16", "sve", "sve2")
_read = {}


def _cpuinfo(path):
    """``(model, flags)`` from a cpuinfo file (model None, flags empty where unreadable)."""
    if path not in _read:
        model, flags = None, frozenset()
        try:
            with open(path) as f:
                for line in f:
                    key = line.split(":", 1)[0].strip().lower()
                    value = line.split(":", 1)[1].strip() if ":" in line else ""
                    # x86 names the model per core; Arm boards name the SoC ("Hardware").
                    if key in ("model name", "hardware", "cpu model") and model is None:
                        model = value
                    elif key in ("flags", "features") and not flags:
                        flags = frozenset(value.split())
        except (IOError, OSError):
            pass
        _read[path] = (model, flags)
    return _read[path]


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name (or the SoC's), else what ``platform`` knows."""
    return _cpuinfo(cpuinfo)[0] or platform.processor() or "unknown cpu"


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """Every feature flag the first core lists, a frozenset (empty where they cannot be
    read)."""
    return _cpuinfo(cpuinfo)[1]


def kernel_features(cpuinfo="/proc/cpuinfo"):
    """The :data:`KERNEL_FEATURES` this CPU has, in that order."""
    flags = _cpuinfo(cpuinfo)[1]
    return [f for f in KERNEL_FEATURES if f in flags]
