"""NVIDIA NVML total-energy counter (millijoules since the driver loaded) through nvidia-ml-py
(``import pynvml``), Volta and newer."""
from edgesdk.runtime.power.base import PowerSensor, SensorLost


class NvmlGpu(PowerSensor):
    kind = "energy"

    def __init__(self, pynvml, index, handle, gpu_name):
        PowerSensor.__init__(self, "nvml", "GPU {} ({})".format(index, gpu_name), True,
                             "nvml:{}".format(index))
        self._nvml, self._handle = pynvml, handle

    def read(self):
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
        except Exception as exc:
            raise SensorLost("NVML energy counter of {} stopped answering: {}".format(self.rail, exc))


def probe(root="/"):
    if root != "/":
        return []  # NVML is a library, not files: nothing to find in a fixture tree
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return []
    found = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception:
            continue  # GPU without the counter (pre-Volta)
        name = pynvml.nvmlDeviceGetName(h)
        found.append(NvmlGpu(pynvml, i, h, name.decode() if isinstance(name, bytes) else name))
    return found
