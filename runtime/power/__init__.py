"""Power and energy sensors, found by probing the machine (Python 3.6, stdlib + optional pynvml).

Two kinds: *power* sensors give instantaneous watts (Jetson INA3221, Linux power_supply) and are
integrated over time by :class:`edgesdk.runtime.power.meter.EnergyMeter`; *energy* counters give
cumulative joules (RAPL, NVML) and are differenced. No sensor means no energy number.
"""
from edgesdk.runtime.power.base import PowerSensor, SensorError, SensorLost  # noqa: F401
from edgesdk.runtime.power.probe import probe_sensors  # noqa: F401
