"""Find the sensors of this machine (or of a sysfs tree laid out under ``root``)."""
from edgesdk.runtime.power import jetson, nvml, rapl, supply

# Probe order = preference for the board total: board input rails, then package counters.
PROBES = (jetson.probe, supply.probe, rapl.probe, nvml.probe)


def probe_sensors(root="/"):
    """Every readable sensor, each checked with one read; an empty list means "no sensor"."""
    found = []
    for probe in PROBES:
        for sensor in probe(root):
            try:
                sensor.read()
            except Exception:
                continue
            found.append(sensor)
    return found
