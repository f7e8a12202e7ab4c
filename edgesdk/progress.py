"""A dependency-free progress bar on stderr (runs on the device too)."""
import sys
import time


class Progress(object):
    """``with Progress(total, "exporting") as bar: ... bar.update()``.

    Draws only when stderr is a terminal, so logs and CI output stay clean; ``enabled=False``
    silences it entirely.
    """

    def __init__(self, total, desc, enabled=True, stream=None):
        self.total = max(int(total), 1)
        self.desc = desc
        self.count = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._start = time.time()
        self._last = 0.0

    def __enter__(self):
        self._draw(force=True)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        return False

    def update(self, n=1, note=""):
        """Advance by ``n`` steps; ``note`` is shown after the bar."""
        self.count = min(self.total, self.count + n)
        self._draw(note=note)

    def _draw(self, force=False, note=""):
        if not self.enabled:
            return
        now = time.time()
        if not force and now - self._last < 0.1 and self.count < self.total:
            return
        self._last = now
        width = 24
        done = int(width * self.count / self.total)
        self.stream.write("\r{} [{}{}] {}/{} {:.1f}s {}".format(
            self.desc, "#" * done, "." * (width - done), self.count, self.total,
            now - self._start, note)[:120])
        self.stream.flush()
