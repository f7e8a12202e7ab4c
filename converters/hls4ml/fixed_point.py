"""Fixed-point types (``fixed<W,I>``, ``ufixed``) for value ranges and value grids, and
the range a type holds.
"""
import math

import numpy as np

from edgesdk.errors import InputError


def integer_bits(low, high):
    """Integer bits of an unsigned type that holds max(|low|, |high|) (0 for all zeros)."""
    peak = max(abs(float(low)), abs(float(high)))
    return int(math.floor(math.log2(peak))) + 1 if peak > 0 else 0


def fixed_type(low, high, width):
    """The narrowest-integer ``fixed``/``ufixed`` of ``width`` bits that holds [low, high]."""
    integer = integer_bits(low, high) if (low or high) else 1
    if low >= 0:
        return "ufixed<{},{},RND_CONV,SAT>".format(width, integer)
    return "fixed<{},{},RND_CONV,SAT>".format(width, integer + 1)


def grid_type(values, width):
    """The exact fixed-point type of values already on a power-of-two grid (a quantized
    stage's output feeding the next graph), or None if they are not within ``width`` bits."""
    values = np.asarray(values, dtype=np.float64)
    for frac in range(0, 17):
        scaled = values * 2.0 ** frac
        if np.all(scaled == np.round(scaled)):
            low, high = float(values.min()), float(values.max())
            integer = integer_bits(low, high)
            bits = integer + frac + (0 if low >= 0 else 1)
            if bits > width:
                return None
            return ("ufixed<{},{}>" if low >= 0 else "fixed<{},{}>").format(
                max(bits, 1), integer + (0 if low >= 0 else 1))
    return None


def type_range(text):
    """``(low, high)`` that a fixed-point or integer type holds, in any spelling hls4ml reads
    (``fixed<W,I>``, ``ap_fixed<W,I,AP_RND,AP_SAT>``, ``ufixed``, ``ap_int<W>``, ...), parsed
    by hls4ml itself; None for types without a fixed range (floats); a string hls4ml cannot
    read is an :class:`InputError`."""
    from edgesdk.deps import require
    require("hls4ml", "fpga", "read fixed-point types")
    from hls4ml.backends.fpga.fpga_backend import FPGABackend
    try:
        kind = FPGABackend.convert_precision_string(str(text))
    except Exception as exc:   # hls4ml raises plain exceptions for unreadable strings
        raise InputError("'{}' is not a type hls4ml reads: {}".format(text, exc))
    width, integer = getattr(kind, "width", None), getattr(kind, "integer", None)
    if width is None or integer is None or type(kind).__name__ not in (
            "FixedPrecisionType", "IntegerPrecisionType"):
        return None
    step = 2.0 ** (integer - width)
    if not kind.signed:
        return 0.0, 2.0 ** integer - step
    return -2.0 ** (integer - 1), 2.0 ** (integer - 1) - step


def value_type(values, width):
    """The type of constant ``values``: exact when they lie on a power-of-two grid within
    ``width`` bits, else ``width`` bits with the integer bits their range needs."""
    exact = grid_type(values, width) if np.any(values) else None
    return exact or fixed_type(float(np.min(values)), float(np.max(values)), width)
