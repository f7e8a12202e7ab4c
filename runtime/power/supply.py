"""Linux ``power_supply`` class (Snapdragon boards and phones, laptops): ``power_now`` in
microwatts where the driver has it, else ``voltage_now`` (uV) x ``current_now`` (uA). The sign
of current_now differs between drivers; its magnitude is used."""
import os

from edgesdk.runtime.power.base import PowerSensor, listdir, read_number, read_text


class SupplyRail(PowerSensor):
    def __init__(self, path, rail):
        PowerSensor.__init__(self, "power-supply", rail, True, path)

    def read(self):
        p = os.path.join(self.source, "power_now")
        if os.path.exists(p):
            return abs(read_number(p)) / 1e6
        volts = read_number(os.path.join(self.source, "voltage_now")) / 1e6
        amps = abs(read_number(os.path.join(self.source, "current_now"))) / 1e6
        return volts * amps


def probe(root="/"):
    base = os.path.join(root, "sys/class/power_supply")
    found = []
    for name in listdir(base):
        d = os.path.join(base, name)
        has_power = os.path.exists(os.path.join(d, "power_now"))
        has_vi = all(os.path.exists(os.path.join(d, f)) for f in ("voltage_now", "current_now"))
        if has_power or has_vi:
            found.append(SupplyRail(d, "{} ({})".format(name, read_text(os.path.join(d, "type"), "?"))))
    return found
