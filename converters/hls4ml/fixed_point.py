"""Fixed-point types (``fixed<W,I>``, ``ufixed``) for value ranges and value grids, and
the range a type holds.
"""
import math
import re

import numpy as np


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
    """``(low, high)`` that a ``fixed<W,I>``/``ufixed<W,I>`` type holds."""
    m = re.match(r"\s*(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)", str(text))
    if not m:
        return None
    unsigned, width, integer = m.group(1) == "u", int(m.group(2)), int(m.group(3))
    step = 2.0 ** (integer - width)
    if unsigned:
        return 0.0, 2.0 ** integer - step
    return -2.0 ** (integer - 1), 2.0 ** (integer - 1) - step


def value_type(values, width):
    """The type of constant ``values``: exact when they lie on a power-of-two grid within
    ``width`` bits, else ``width`` bits with the integer bits their range needs."""
    exact = grid_type(values, width) if np.any(values) else None
    return exact or fixed_type(float(np.min(values)), float(np.max(values)), width)
