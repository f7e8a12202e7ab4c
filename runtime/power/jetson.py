"""Jetson INA3221 power monitors.

JetPack 4 (TX2, Nano; ina3221x driver, iio): ``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/``
with ``rail_name_N`` and ``in_power{N}_input`` in milliwatts. On the TX2 the two monitors carry
VDD_SYS_GPU, VDD_SYS_SOC, VDD_4V0_WIFI and VDD_IN (board input), VDD_SYS_CPU, VDD_SYS_DDR.

JetPack 5 (ina3221 driver, hwmon): ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/`` with
``inN_label``, ``inN_input`` in millivolts and ``currN_input`` in milliamps.
"""
import os
import re

from edgesdk.runtime.power.base import PowerSensor, listdir, read_number, read_text

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


class IioRail(PowerSensor):
    """One JetPack 4 rail: ``in_power{N}_input`` in mW."""

    def __init__(self, path, rail):
        PowerSensor.__init__(self, "jetson-ina3221-iio", rail, rail in TOTAL_RAILS, path)

    def read(self):
        return read_number(self.source) / 1000.0


class HwmonRail(PowerSensor):
    """One JetPack 5 rail: voltage (mV) x current (mA)."""

    def __init__(self, volt_path, curr_path, rail):
        PowerSensor.__init__(self, "jetson-ina3221-hwmon", rail, rail in TOTAL_RAILS, volt_path)
        self.curr_path = curr_path

    def read(self):
        return read_number(self.source) * read_number(self.curr_path) / 1e6


def probe(root="/"):
    """Every INA3221 rail found under ``root`` (a sysfs tree; "/" on a board)."""
    found = []
    base4 = os.path.join(root, "sys/bus/i2c/drivers/ina3221x")
    for dev in listdir(base4):
        for iio in listdir(os.path.join(base4, dev)):
            if not iio.startswith("iio:device"):
                continue
            d = os.path.join(base4, dev, iio)
            for name in listdir(d):
                m = re.match(r"^rail_name_(\d+)$", name)
                power = m and os.path.join(d, "in_power{}_input".format(m.group(1)))
                if power and os.path.exists(power):
                    found.append(IioRail(power, read_text(os.path.join(d, name), "rail" + m.group(1))))
    base5 = os.path.join(root, "sys/bus/i2c/drivers/ina3221")
    for dev in listdir(base5):
        hw = os.path.join(base5, dev, "hwmon")
        for h in listdir(hw):
            d = os.path.join(hw, h)
            for name in listdir(d):
                m = re.match(r"^in(\d+)_label$", name)
                if not m:
                    continue
                volt = os.path.join(d, "in{}_input".format(m.group(1)))
                curr = os.path.join(d, "curr{}_input".format(m.group(1)))
                label = read_text(os.path.join(d, name), "")
                if os.path.exists(volt) and os.path.exists(curr) and label and label != "NC":
                    found.append(HwmonRail(volt, curr, label))
    return found
