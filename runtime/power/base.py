"""The sensor interface and sysfs helpers shared by the readers."""
import os

from edgesdk.errors import SensorError, SensorLost  # noqa: F401 (the readers import them from here)


class PowerSensor(object):
    """One measurable quantity of a board.

    ``kind`` is ``"power"`` (``read()`` returns watts now) or ``"energy"`` (``read()``
    returns a cumulative counter in joules; ``wrap_j`` is where it wraps to 0, or None).
    ``rail`` names what is measured (e.g. ``VDD_IN``, ``package-0``, ``GPU 0``);
    ``total`` is True for the rail that covers the whole board or device.
    """

    kind = "power"
    wrap_j = None

    def __init__(self, name, rail, total, source):
        self.name = name
        self.rail = rail
        self.total = total
        self.source = source

    def read(self):
        raise NotImplementedError

    def describe(self):
        """A dict for listings and for the profile store."""
        return {"sensor": self.name, "rail": self.rail, "kind": self.kind,
                "total": self.total, "source": self.source}


def read_number(path):
    """A sysfs file holding one integer; SensorLost if it vanished or became unreadable."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except (IOError, OSError) as exc:
        raise SensorLost("{} cannot be read: {}".format(path, exc))
    try:
        return int(text)
    except ValueError:
        raise SensorError("{} holds '{}', expected an integer".format(path, text[:40]))


def read_text(path, default=None):
    """A sysfs file's stripped text, or ``default`` when it is missing."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (IOError, OSError):
        return default


def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
