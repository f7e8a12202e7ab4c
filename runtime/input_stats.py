"""What model inputs looked like at conversion, and a cheap check that run-time inputs still do.

``convert`` records per-channel mean, std, min and max of the data it was given, after
preprocessing. A batch far outside that range is almost always the wrong preprocessing: raw
pixels (0..255 or 0..16 floats) taken as normalized input, a missing normalization, another
channel order's scale. Such inputs still run (the model cannot tell), so the runtime warns once
per loaded model rather than refusing. Python 3.6 / numpy 1.19 compatible.
"""
import warnings

import numpy as np

from edgesdk.errors import InputRangeWarning  # noqa: F401 (re-exported)

# A batch is "far outside" when a value lies more than this many recorded ranges (max - min)
# beyond the recorded extremes: raw 0..16 or 0..255 pixels against inputs normalized to about
# -0.5..3 are several ranges out, while real inputs of another sample stay inside.
MARGIN_RANGES = 1.0


def summarize(x, source):
    """Per-channel (axis 1) statistics of a model-input batch ``x`` for the manifest."""
    x = np.asarray(x, dtype=np.float64)
    per = x.reshape(x.shape[0], x.shape[1], -1) if x.ndim >= 3 else x.reshape(x.shape[0], 1, -1)
    flat = per.transpose(1, 0, 2).reshape(per.shape[1], -1)
    return {"source": source, "samples": int(x.shape[0]),
            "mean": [float(v) for v in flat.mean(axis=1)],
            "std": [float(v) for v in flat.std(axis=1)],
            "min": [float(v) for v in flat.min(axis=1)],
            "max": [float(v) for v in flat.max(axis=1)]}


class InputGuard(object):
    """Warns (once) when a batch lies far outside the input statistics recorded at conversion.

    Two reductions of the whole batch per call (min and max): per-channel detail is computed
    only when the cheap test fails."""

    def __init__(self, spec):
        stats = spec.get("statistics")
        self.spec = spec
        self.stats = stats
        self.warned = False
        if stats:
            lo, hi = np.asarray(stats["min"]), np.asarray(stats["max"])
            span = np.maximum(hi - lo, 1e-6)
            self.lo = float((lo - MARGIN_RANGES * span).min())
            self.hi = float((hi + MARGIN_RANGES * span).max())

    def check(self, x):
        """Warn if ``x`` (a checked float32 batch) is far outside the recorded range; returns
        the warning text or None."""
        if not self.stats or self.warned or not x.size:
            return None
        # The ufuncs' reductions directly: x.min()/x.max() add a Python wrapper each, as much
        # again on a small batch.
        lo, hi = float(np.minimum.reduce(x, axis=None)), float(np.maximum.reduce(x, axis=None))
        if self.lo <= lo and hi <= self.hi:
            return None
        self.warned = True
        s = self.stats
        pre = self.spec.get("preprocessing")
        msg = ("input '{}' spans {:.4g}..{:.4g}, far outside the {:.4g}..{:.4g} of the {} "
               "samples of {} the bundle was converted with (after preprocessing): float input "
               "is taken as model-ready. {}".format(
                   self.spec["name"], lo, hi, min(s["min"]), max(s["max"]), s["samples"],
                   s["source"],
                   "Raw pixels go through edgesdk.runtime.preprocess() first ((raw * {:g} - "
                   "mean) / std), as `edgesdk run` does with integer pixels.".format(
                       pre["scale"]) if pre else
                   "Apply the preprocessing the model was trained with."))
        warnings.warn(msg, InputRangeWarning, stacklevel=3)
        return msg


def describe_input(spec):
    """Lines saying how a bundle takes input (``spec``: its manifest input record) and what
    the conversion data looked like after preprocessing."""
    pre, stats = spec.get("preprocessing"), spec.get("statistics")
    lines = ["input rule: float32 is taken as model-ready; {}".format(
        "integer pixels are preprocessed as (raw * {:g} - mean {}) / std {}".format(
            pre["scale"], pre["mean"], pre["std"]) if pre else
        "no preprocessing recorded, so integer input is refused")]
    if stats:
        ranges = ["{:.3g}..{:.3g}".format(a, b) for a, b in zip(stats["min"], stats["max"])]
        lines.append("model input of {} ({} samples), per channel: mean {}, std {}, range {}; "
                     "the runtime warns on batches far outside it".format(
                         stats["source"], stats["samples"], _short(stats["mean"]),
                         _short(stats["std"]), _short(ranges, str)))
    return lines


def _short(values, fmt="{:.3g}".format):
    return "[" + ", ".join(fmt(v) for v in values[:4]) + (", ...]" if len(values) > 4 else "]")
