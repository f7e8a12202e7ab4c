"""Check a loaded bundle against the reference inputs/outputs stored in it at conversion."""
import numpy as np

from edgesdk.errors import InputError, IntegrityError
from edgesdk.manifest import graph_entries, precision_of
from edgesdk.runtime.datafiles import NPZ_ERRORS, read_npz
from edgesdk.runtime.inputs import check_batch


def read_reference(bundle, max_bytes=None):
    """``(inputs, [expected logits of each exit])`` from the bundle's reference file, checked
    like any input (float samples of the input spec, finite) and against the exits (one
    float array per exit, one row per sample). :class:`IntegrityError` where the bundle has
    none or it does not hold that (the file is hashed, so the bundle was made wrong)."""
    ref = bundle.manifest.get("reference")
    if ref is None:
        raise IntegrityError("bundle '{}' has no reference data".format(bundle.root))
    where = "reference file '{}'".format(ref["file"])
    try:
        data = read_npz(bundle.path(ref["file"]), max_bytes)
        x = check_batch(data["input"], bundle.manifest["inputs"][0])
        expected = [data["exit_{}".format(k)] for k in range(len(bundle.manifest["exits"]))]
    except NPZ_ERRORS + (KeyError,) as exc:
        raise IntegrityError("{} cannot be read: {}".format(where, exc))
    except InputError as exc:
        raise IntegrityError("{}: {}".format(where, exc))
    for k, e in enumerate(expected):
        if e.dtype.kind != "f" or e.ndim < 1 or len(e) != len(x):
            raise IntegrityError("{}: exit_{} has dtype {} and shape {}; expected float logits, "
                                 "one row for each of its {} inputs".format(
                                     where, k, e.dtype, list(e.shape), len(x)))
    return x, expected


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


def decisive_agreement(got, expected, atol, rtol):
    """Per exit, whether ``got`` has the top-1 class of ``expected`` on every sample whose
    expected top two logits are further apart than the tolerance allows either to move
    (``2 * (atol + rtol * |top logit|)``): near ties may flip between precisions. Returns
    ``(ok per exit, decisive samples per exit, top-1 agreement per exit over all samples)``."""
    ok, counted, agreement = [], [], []
    for g, e in zip(got, expected):
        if not len(e):
            ok.append(True)
            counted.append(0)
            agreement.append(1.0)
            continue
        top2 = np.sort(e, axis=1)[:, -2:] if e.shape[1] > 1 else np.concatenate([e, e], 1)
        decisive = (top2[:, 1] - top2[:, 0]) > 2 * (atol + rtol * np.abs(top2[:, 1]))
        same = g.argmax(1) == e.argmax(1)
        ok.append(bool(same[decisive].all()))
        counted.append(int(decisive.sum()))
        agreement.append(float(same.mean()))
    return ok, counted, agreement


def check_reference(model):
    """Run the reference inputs; compare every exit with the outputs recorded at conversion
    (those of the bundle's selected builds).

    Returns ``{"passed", "max_abs_error" (per exit), "atol", "rtol", "samples", "builds",
    "top1_agreement" (per exit), "mode"}``; ``builds`` says which build of each graph ran.
    With the selected precisions (``mode`` "logits") an element passes when ``|got -
    expected| <= atol + rtol * |expected|``. When ``model`` runs builds of another precision
    (``mode`` "top-1"), logits legitimately differ by more (an INT8 build against FP32
    reference outputs): an exit passes when it keeps the reference's top-1 class on every
    sample that is no near tie at the reduced-precision tolerance.
    """
    ref = model.bundle.manifest.get("reference")
    x, expected = read_reference(model.bundle, model.memory.limit)
    atol, rtol = float(ref["atol"]), float(ref["rtol"])
    m = model.bundle.manifest
    # The stages' own graphs: gates and width variants added later change which samples run
    # what, not the graphs the reference outputs were recorded from.
    got = model.exit_logits(x, adaptive=False)
    errors, failing = compare_exits(got, expected, atol, rtol)
    out = {"max_abs_error": errors, "samples": int(x.shape[0]), "builds": model.ran,
           "mode": "logits"}
    if any(model.ran[e["id"]]["precision"] != precision_of(e)
           for e in graph_entries(m)):
        atol, rtol = max(atol, REDUCED_PRECISION_ATOL), max(rtol, REDUCED_PRECISION_RTOL)
        ok, counted, agreement = decisive_agreement(got, expected, atol, rtol)
        failing = [k for k, v in enumerate(ok) if not v]
        out.update(mode="top-1", decisive_samples=counted)
    else:
        agreement = decisive_agreement(got, expected, atol, rtol)[2]
    out.update(passed=not failing, atol=atol, rtol=rtol, top1_agreement=agreement)
    return out
