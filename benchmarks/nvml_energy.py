"""edgesdk's NVML energy reader against nvidia-smi on a GPU under load, in one run.

Needs an NVIDIA GPU (Volta or newer), nvidia-ml-py and PyTorch with CUDA for the load; not part
of `make bench`. Steps: probe the sensors as the profiler does; measure an idle window and a
window of back-to-back float16 matrix products with edgesdk's EnergyMeter on the NVML counter
while a thread samples `nvidia-smi --query-gpu=power.draw` (the driver's own power reading);
compare the mean power of both. The last line is one JSON object.
"""
import argparse
import datetime
import json
import subprocess
import threading
import time


def smi_power(stop, out, interval_s=0.1):
    """Sample nvidia-smi's power.draw (W) into ``out`` until ``stop`` is set."""
    while not stop.is_set():
        text = subprocess.check_output(["nvidia-smi", "--query-gpu=power.draw",
                                        "--format=csv,noheader,nounits"], text=True)
        out.append(float(text.split()[0]))
        stop.wait(interval_s)


def window(sensor, seconds, work=None):
    """(edgesdk MeterResult, mean nvidia-smi W) over a window of ``seconds``."""
    from edgesdk.runtime.power.meter import EnergyMeter
    stop, samples = threading.Event(), []
    thread = threading.Thread(target=smi_power, args=(stop, samples))
    thread.start()
    with EnergyMeter(sensor) as meter:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            work() if work else time.sleep(0.01)
    stop.set()
    thread.join()
    return meter.result, sum(samples) / max(len(samples), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    import torch
    from edgesdk.runtime.power.probe import probe_sensors
    sensors = [s for s in probe_sensors() if s.name == "nvml"]
    if not sensors:
        raise SystemExit("no NVML energy counter found (needs an NVIDIA GPU and nvidia-ml-py)")
    sensor = sensors[0]
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)

    def load():
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
    load()
    idle, idle_smi = window(sensor, args.seconds)
    busy, busy_smi = window(sensor, args.seconds, load)
    out = {"date": datetime.date.today().isoformat(), "sensor": sensor.rail,
           "idle_w_edgesdk": idle.mean_power_w, "idle_w_nvidia_smi": idle_smi,
           "load_w_edgesdk": busy.mean_power_w, "load_w_nvidia_smi": busy_smi,
           "load_j_edgesdk": busy.energy_j, "load_seconds": busy.seconds,
           "load_ratio_edgesdk_vs_smi": busy.mean_power_w / busy_smi if busy_smi else None,
           "status": busy.status}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
