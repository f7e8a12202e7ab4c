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


# Reduced-precision builds (FP16, INT8, fixed point) are checked against outputs of other
# builds with this tolerance: integer kernels also round differently across instruction sets.
REDUCED_PRECISION_ATOL = 5e-2
REDUCED_PRECISION_RTOL = 1e-2


def check_reference(model):
    """Run the reference inputs; compare every exit's logits with those recorded at conversion
    (the outputs of the bundle's selected builds).

    Returns ``{"passed", "max_abs_error" (per exit), "atol", "rtol", "samples", "builds",
    "top1_agreement" (per exit)}``; an element passes when ``|got - expected| <= atol + rtol *
    |expected|``. ``builds`` says which build of each graph ran. When ``model`` runs builds
    of another precision than the selected ones, the tolerance widens to the reduced-precision
    one (the reference was not made by them).
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
    m = model.bundle.manifest
    if any(model.ran[e["id"]]["precision"] != e.get("precision", "fp32")
           for e in m["stages"] + m["exits"]):
        atol, rtol = max(atol, REDUCED_PRECISION_ATOL), max(rtol, REDUCED_PRECISION_RTOL)
    got = model.exit_logits(x)
    errors, failing = compare_exits(got, expected, atol, rtol)
    return {"passed": not failing, "max_abs_error": errors, "atol": atol, "rtol": rtol,
            "samples": int(x.shape[0]), "builds": model.ran,
            "top1_agreement": [float((g.argmax(1) == e.argmax(1)).mean()) if len(g) else 1.0
                               for g, e in zip(got, expected)]}
