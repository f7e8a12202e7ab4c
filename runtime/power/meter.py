"""Energy over a measured window: a sampling thread plus exact integration of the samples.

Power sensors are integrated with the trapezoid rule over (time, watts) samples; energy
counters are differenced sample to sample, adding the wrap range where the counter wrapped
(sampling often enough that it wraps at most once between samples). If the sensor stops
answering, the window keeps its latency and its energy is reported as missing, never guessed.
"""
import threading
import time

from edgesdk.runtime.power.base import SensorError


def integrate_power(samples):
    """Joules from ``[(seconds, watts), ...]`` (trapezoid rule); needs 2+ samples."""
    total = 0.0
    for (t0, p0), (t1, p1) in zip(samples, samples[1:]):
        total += 0.5 * (p0 + p1) * (t1 - t0)
    return total


def accumulate_counter(samples, wrap_j):
    """Joules from ``[(seconds, counter joules), ...]``; a decrease means one wrap of ``wrap_j``.

    Raises SensorError for a decrease on a counter that does not wrap (it was reset).
    """
    total = 0.0
    for (_, a), (_, b) in zip(samples, samples[1:]):
        d = b - a
        if d < 0:
            if not wrap_j:
                raise SensorError("energy counter went back from {} J to {} J (reset)".format(a, b))
            d += wrap_j
        total += d
    return total


class MeterResult(object):
    """``energy_j`` (None when not measured), ``seconds``, ``mean_power_w``, ``samples``,
    ``status`` ("ok", "no sensor", or why the energy is missing)."""

    def __init__(self, energy_j, seconds, samples, status):
        self.energy_j = energy_j
        self.seconds = seconds
        self.samples = samples
        self.status = status
        self.mean_power_w = energy_j / seconds if energy_j is not None and seconds > 0 else None

    def __repr__(self):
        return "MeterResult(energy_j={}, seconds={:.4f}, samples={}, status={!r})".format(
            self.energy_j, self.seconds, self.samples, self.status)


class EnergyMeter(object):
    """``with EnergyMeter(sensor) as m: work()`` then ``m.result`` (a MeterResult).

    ``sensor=None`` measures time only and reports "no sensor". ``interval_s``: sampling
    period of the background thread. 50 ms by default: on 2 cores the thread competes with the
    inference threads; it slowed the measured graph by 6-7% at 5 ms, 2.6-3.5% at 20 ms and
    1.1-1.5% at 50 ms. The profiler's energy windows (1 s) still get ~20 samples.
    """

    def __init__(self, sensor, interval_s=0.05, clock=time.perf_counter):
        self.sensor = sensor
        self.interval_s = interval_s
        self.clock = clock
        self.result = None
        self._samples = []
        self._error = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        try:
            self._samples.append((self.clock(), self.sensor.read()))
            return True
        except Exception as exc:  # any reader failure ends the energy part, not the run
            self._error = "sensor lost: {}".format(exc)
            return False

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            if not self._sample():
                return

    def __enter__(self):
        self._start = self.clock()
        if self.sensor is not None and self._sample():
            self._thread = threading.Thread(target=self._loop, name="edgesdk-power")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, *exc):
        end = self.clock()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self._error is None:
                self._sample()
        seconds = end - self._start
        if self.sensor is None:
            self.result = MeterResult(None, seconds, 0, "no sensor")
        elif self._error is not None or len(self._samples) < 2:
            self.result = MeterResult(None, seconds, len(self._samples),
                                      self._error or "too few samples")
        else:
            try:
                if self.sensor.kind == "energy":
                    energy = accumulate_counter(self._samples, self.sensor.wrap_j)
                else:
                    energy = integrate_power(self._samples)
                self.result = MeterResult(energy, self._samples[-1][0] - self._samples[0][0],
                                          len(self._samples), "ok")
            except SensorError as err:
                self.result = MeterResult(None, seconds, len(self._samples), str(err))
        return False


def idle_power(sensor, seconds=1.0, interval_s=0.05):
    """Mean power (W) with nothing running, measured just before the active window."""
    with EnergyMeter(sensor, interval_s) as meter:
        time.sleep(seconds)
    return meter.result.mean_power_w
