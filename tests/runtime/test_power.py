"""Power sensor readers on sysfs trees laid out like the real boards, and exact integration."""
import os
import threading
import time

import pytest

from edgesdk.runtime.power import SensorError, probe_sensors
from edgesdk.runtime.power.meter import EnergyMeter, accumulate_counter, idle_power, integrate_power


def write_tree(root, files):
    for rel, text in files.items():
        path = os.path.join(str(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(str(text) + "\n")


TX2_JETPACK4 = {  # two INA3221 monitors as the ina3221x iio driver shows them on a TX2
    "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0/rail_name_0": "VDD_SYS_GPU",
    "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0/in_power0_input": 1520,
    "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0/rail_name_1": "VDD_SYS_SOC",
    "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0/in_power1_input": 610,
    "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0/rail_name_2": "VDD_4V0_WIFI",
    "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0/in_power2_input": 0,
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/rail_name_0": "VDD_IN",
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/in_power0_input": 4870,
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/rail_name_1": "VDD_SYS_CPU",
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/in_power1_input": 1140,
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/rail_name_2": "VDD_SYS_DDR",
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/in_power2_input": 700,
    "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1/in_current0_input": 1000,
}

JETPACK5 = {  # ina3221 hwmon: millivolts and milliamps per channel
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_label": "VDD_IN",
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_input": 5080,
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input": 1250,
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in2_label": "VDD_CPU_GPU_CV",
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in2_input": 5072,
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr2_input": 400,
}

RAPL = {
    "sys/class/powercap/intel-rapl/enabled": 1,
    "sys/class/powercap/intel-rapl:0/name": "package-0",
    "sys/class/powercap/intel-rapl:0/energy_uj": 123456789,
    "sys/class/powercap/intel-rapl:0/max_energy_range_uj": 262143328850,
    "sys/class/powercap/intel-rapl:0:0/name": "core",
    "sys/class/powercap/intel-rapl:0:0/energy_uj": 2000000,
}

SUPPLY = {  # a Snapdragon board's battery (uV, uA; current negative while discharging)
    "sys/class/power_supply/battery/type": "Battery",
    "sys/class/power_supply/battery/voltage_now": 3850000,
    "sys/class/power_supply/battery/current_now": -520000,
    "sys/class/power_supply/usb/type": "USB",
    "sys/class/power_supply/usb/power_now": 2500000,
    "sys/class/power_supply/usb/online": 1,
}


def test_tx2_jetpack4_rails(tmp_path):
    write_tree(tmp_path, TX2_JETPACK4)
    sensors = probe_sensors(str(tmp_path))
    rails = {s.rail: s for s in sensors}
    assert set(rails) == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU",
                          "VDD_SYS_DDR"}
    assert [s.rail for s in sensors if s.total] == ["VDD_IN"]
    assert rails["VDD_IN"].read() == pytest.approx(4.870)
    assert rails["VDD_SYS_GPU"].read() == pytest.approx(1.520)
    assert {s.kind for s in sensors} == {"power"} and sensors[0].name == "jetson-ina3221-iio"


def test_jetpack5_hwmon_rails(tmp_path):
    write_tree(tmp_path, JETPACK5)
    rails = {s.rail: s for s in probe_sensors(str(tmp_path))}
    assert rails["VDD_IN"].read() == pytest.approx(5.080 * 1.250) and rails["VDD_IN"].total
    assert rails["VDD_CPU_GPU_CV"].read() == pytest.approx(5.072 * 0.400)


def test_rapl_zones(tmp_path):
    write_tree(tmp_path, RAPL)
    zones = {s.rail: s for s in probe_sensors(str(tmp_path))}
    assert set(zones) == {"package-0", "core"}
    pkg = zones["package-0"]
    assert pkg.kind == "energy" and pkg.total and not zones["core"].total
    assert pkg.read() == pytest.approx(123.456789) and pkg.wrap_j == pytest.approx(262143.32885)


def test_power_supply(tmp_path):
    write_tree(tmp_path, SUPPLY)
    rails = {s.rail: s for s in probe_sensors(str(tmp_path))}
    assert rails["battery (Battery)"].read() == pytest.approx(3.85 * 0.52)
    assert rails["usb (USB)"].read() == pytest.approx(2.5)


def test_no_sensor_and_unreadable_files(tmp_path):
    assert probe_sensors(str(tmp_path)) == []
    write_tree(tmp_path, {"sys/class/powercap/intel-rapl:0/energy_uj": "garbage"})
    assert probe_sensors(str(tmp_path)) == []


def test_trapezoid_and_counter_integration_on_known_traces():
    linear = [(i / 100.0, 2.0 + i / 100.0) for i in range(101)]       # p = 2 + t on [0, 1]
    assert integrate_power(linear) == pytest.approx(2.5, abs=1e-12)
    step = [(0.0, 1.0), (0.5, 1.0), (0.5, 3.0), (1.0, 3.0)]            # 1 W then 3 W
    assert integrate_power(step) == pytest.approx(2.0)
    assert accumulate_counter([(0, 90.0), (1, 95.0), (2, 3.0), (3, 8.0)], wrap_j=100.0) == 18.0
    with pytest.raises(SensorError, match="reset"):
        accumulate_counter([(0, 5.0), (1, 2.0)], wrap_j=None)


class Constant(object):
    kind, wrap_j, rail = "power", None, "test"

    def read(self):
        return 3.0


def test_meter_with_a_constant_sensor_is_exact():
    with EnergyMeter(Constant(), interval_s=0.002) as m:
        time.sleep(0.05)
    r = m.result
    assert r.status == "ok" and r.samples >= 3
    assert r.mean_power_w == pytest.approx(3.0) and r.energy_j == pytest.approx(3.0 * r.seconds)
    assert idle_power(Constant(), seconds=0.02) == pytest.approx(3.0)


def test_sensor_disappearing_mid_run_keeps_latency_and_marks_energy_missing(tmp_path):
    write_tree(tmp_path, TX2_JETPACK4)
    vdd_in = [s for s in probe_sensors(str(tmp_path)) if s.rail == "VDD_IN"][0]
    remover = threading.Timer(0.02, os.remove, [vdd_in.source])
    with EnergyMeter(vdd_in, interval_s=0.002) as m:
        remover.start()
        time.sleep(0.06)
    assert m.result.energy_j is None and m.result.mean_power_w is None
    assert m.result.status.startswith("sensor lost") and m.result.seconds >= 0.06


def test_no_sensor_measures_time_only():
    with EnergyMeter(None) as m:
        time.sleep(0.01)
    assert m.result.status == "no sensor" and m.result.energy_j is None and m.result.seconds >= 0.01
