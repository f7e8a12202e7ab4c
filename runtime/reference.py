"""Check a loaded bundle against the reference inputs/outputs stored in it at conversion."""
import numpy as np

from edgesdk.errors import IntegrityError
from edgesdk.runtime.datafiles import NPZ_ERRORS, read_npz


def compare_exits(got, expected, atol, rtol):
    """Per-exit ``(max abs errors, indices of failing exits)``; an element passes when
    ``|got - expected| <= atol + rtol * |expected|``. Shapes must match."""
    errors, failing = [], []
    for k, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            raise IntegrityError("exit {}: output shape {} differs from the expected {}".format(
                k, list(g.shape), list(e.shape)))
        diff = np.abs(g.astype(np.float64) - e)
        errors.append(float(diff.max()) if diff.size else 0.0)
        if not np.all(diff <= atol + rtol * np.abs(e)):
            failing.append(k)
    return errors, failing


def check_reference(model):
    """Run the reference inputs; compare every exit's logits with those recorded at conversion.

    Returns ``{"passed", "max_abs_error" (per exit), "atol", "rtol", "samples"}``; an element
    passes when ``|got - expected| <= atol + rtol * |expected|``.
    """
    ref = model.bundle.manifest.get("reference")
    if ref is None:
        raise IntegrityError("bundle '{}' has no reference data to check against".format(
            model.bundle.root))
    try:
        data = read_npz(model.bundle.path(ref["file"]), model.memory.limit)
        x = data["input"]
        expected = [data["exit_{}".format(k)] for k in range(model.num_exits)]
    except NPZ_ERRORS + (KeyError,) as exc:
        raise IntegrityError("reference file '{}' cannot be read: {}".format(ref["file"], exc))
    atol, rtol = float(ref["atol"]), float(ref["rtol"])
    errors, failing = compare_exits(model.exit_logits(x), expected, atol, rtol)
    return {"passed": not failing, "max_abs_error": errors, "atol": atol, "rtol": rtol,
            "samples": int(x.shape[0])}
