"""The run conditions a measurement was made under, part of a profile row's key.

Latency depends on more than the device: the thread count, the execution provider, the CPU
frequency governor, and on Jetson boards the power mode (``nvpmodel``) and whether
``jetson_clocks`` pinned the clocks. :func:`describe` gives them as one canonical string,
``key=value`` pairs sorted by key and joined by ``;``, so rows measured with 1 and 2 threads,
or in 10 W and MAXN modes, are kept apart instead of replacing each other. What a machine
cannot tell (no cpufreq, not a Jetson) is left out. Python 3.6 compatible.
"""
import os
import subprocess

CPUFREQ = "/sys/devices/system/cpu/cpu0/cpufreq"
TEGRA_RELEASE = "/etc/nv_tegra_release"   # present on Jetson boards (L4T)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def _nvpmodel():
    """The Jetson power mode's name (``nvpmodel -q``), or None."""
    try:
        out = subprocess.run(["nvpmodel", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=10, universal_newlines=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "Power Mode" in line and ":" in line:   # "NV Power Mode: MAXN"
            return line.split(":", 1)[1].strip() or None
    return None


def _jetson_clocks(cpufreq):
    """"on" where jetson_clocks pinned the CPU at its highest frequency (its minimum frequency
    is the maximum), "off" otherwise, None where cpufreq does not say."""
    low, high = _read(os.path.join(cpufreq, "scaling_min_freq")), \
        _read(os.path.join(cpufreq, "cpuinfo_max_freq"))
    if not low or not high:
        return None
    return "on" if low == high else "off"


def current(threads=None, providers=("CPUExecutionProvider",), cpufreq=CPUFREQ,
            tegra_release=TEGRA_RELEASE):
    """``{name: value}`` of this process's run conditions (``threads``: the intra-op thread
    count a model was loaded with; None: all cores)."""
    out = {"threads": str(int(threads or os.cpu_count() or 1)),
           "providers": ",".join(providers)}
    governor = _read(os.path.join(cpufreq, "scaling_governor"))
    if governor:
        out["governor"] = governor
    if os.path.exists(tegra_release):
        mode = _nvpmodel()
        if mode:
            out["nvpmodel"] = mode
        clocks = _jetson_clocks(cpufreq)
        if clocks:
            out["jetson_clocks"] = clocks
    return out


def describe(conditions):
    """The canonical string of a conditions dict (the profile store's ``conditions``)."""
    for k, v in conditions.items():
        if any(c in str(k) + str(v) for c in ";="):
            raise ValueError("run condition {!r}={!r} holds ';' or '='".format(k, v))
    return ";".join("{}={}".format(k, conditions[k]) for k in sorted(conditions))


def parse(text):
    """The dict of a conditions string ({} for the empty string of unrecorded rows)."""
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)
