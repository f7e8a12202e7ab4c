"""Linux powercap RAPL: ``/sys/class/powercap/intel-rapl:N/energy_uj`` (microjoules, wraps at
``max_energy_range_uj``). Top-level zones (packages) count as totals; subzones (core, uncore,
dram) are listed as rails. AMD processors appear under the same names on recent kernels."""
import os
import re

from edgesdk.runtime.power.base import PowerSensor, listdir, read_number, read_text


class RaplZone(PowerSensor):
    kind = "energy"

    def __init__(self, path, rail, total, wrap_uj):
        PowerSensor.__init__(self, "rapl", rail, total, path)
        self.wrap_j = wrap_uj / 1e6 if wrap_uj else None

    def read(self):
        return read_number(os.path.join(self.source, "energy_uj")) / 1e6


def probe(root="/"):
    base = os.path.join(root, "sys/class/powercap")
    found = []
    for zone in listdir(base):
        m = re.match(r"^intel-rapl:(\d+)(:\d+)?$", zone)
        d = os.path.join(base, zone)
        if not m or not os.path.exists(os.path.join(d, "energy_uj")):
            continue
        try:
            read_number(os.path.join(d, "energy_uj"))  # often root-only: skip what we cannot read
        except Exception:
            continue
        wrap = read_text(os.path.join(d, "max_energy_range_uj"))
        found.append(RaplZone(d, read_text(os.path.join(d, "name"), zone), m.group(2) is None,
                              int(wrap) if wrap and wrap.isdigit() else None))
    return found
