"""Build a resolution cascade: one model (shared weights) or one per resolution, converted at
each resolution into one bundle, with thresholds chosen on labelled calibration images.

The last (largest) resolution is the bundle itself; cheaper levels are complete bundles under
``variants/ID/``, hashed by the outer manifest too (see :mod:`edgesdk.runtime.cascade`).
Thresholds: one common threshold for the early levels, certified on the calibration images to
keep the accuracy within ``max_accuracy_drop`` points of the full-resolution model alone with
probability ``confidence``, by the exact bound and fixed-sequence test of
:mod:`~edgesdk.converters.risk` (see :func:`choose_thresholds`).
"""
import os
import shutil
import tempfile

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.converters.draft import BundleDraft
from edgesdk.errors import InputError
from edgesdk.manifest import RESIZE_MODES

VARIANTS = "variants"
PATH_POINTS = 400   # common-threshold levels on the label-free path


def _resolutions(resolutions):
    sizes = []
    for r in resolutions:
        size = (r, r) if isinstance(r, int) and not isinstance(r, bool) else tuple(r)
        if len(size) != 2 or not all(isinstance(d, int) and d >= 1 for d in size):
            raise InputError("a resolution is a positive int or (height, width), got {!r}".format(r))
        sizes.append(size)
    if len(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise InputError("a cascade needs at least 2 different resolutions, got {}".format(sizes))
    if sizes != sorted(sizes, key=lambda s: s[0] * s[1]):
        raise InputError("resolutions go cheapest first (by pixels): got {}".format(sizes))
    return sizes


def _as_multi_exit(model):
    """A model with ``stages``/``heads`` as it is; a plain classifier as one stage whose
    head passes the logits through."""
    from torch import nn
    from edgesdk.converters import MultiExitModel
    if hasattr(model, "stages") and hasattr(model, "heads"):
        return model
    return MultiExitModel([model], [nn.Identity()])


class _LevelRun(object):
    """One common level threshold's outcome on the calibration images."""

    def __init__(self, losses, gains, accuracy, leaving):
        self.losses, self.gains, self.accuracy, self.leaving = losses, gains, accuracy, leaving


def _level_path(scores, higher_is_confident):
    """Common thresholds for the early levels, most conservative first: None (every sample
    climbs to the last level), then each pooled unlabelled score from the most confident
    down (every level at first, geometrically sparser later)."""
    levels = np.unique(np.concatenate(scores))
    if higher_is_confident:
        levels = levels[::-1]
    ranks = np.unique(np.round(np.geomspace(1, len(levels), PATH_POINTS)).astype(int)) - 1
    return [None] + [float(v) for v in levels[ranks]]


def choose_thresholds(level_probs, labels, max_accuracy_drop, policy, confidence=0.99):
    """Per-level thresholds (None for the last level) and a record of the choice, from every
    level's probabilities on labelled calibration samples.

    One common threshold for every level but the last, along a label-free path (from every
    sample climbing to the last level down through the pooled scores), tested in order with
    the exact bound of :mod:`~edgesdk.converters.risk` on P(full resolution right, cascade
    wrong): the most aggressive threshold before the first failure is certified within
    ``max_accuracy_drop`` points with probability ``confidence`` (0: point estimates, the
    most aggressive whose observed drop is within the target). A lower common threshold
    lets every sample out at the same level or earlier, so it is also the cheapest. Raises
    :class:`CalibrationError` when this many samples cannot certify the target."""
    from edgesdk.converters import risk
    risk.check_confidence(confidence)
    labels = np.asarray(labels)
    n = len(labels)
    allowed = max_accuracy_drop / 100.0
    risk.require_certifiable(allowed, n, confidence, "cascade calibration")
    correct = [p.argmax(axis=1) == labels for p in level_probs]
    scores = [policy.score(p) for p in level_probs[:-1]]
    last = len(level_probs) - 1

    def evaluate(threshold):
        level = np.full(n, last)
        if threshold is not None:
            for k in range(last - 1, -1, -1):   # the first confident level wins
                ok = scores[k] >= threshold if policy.higher_is_confident else scores[k] <= threshold
                level[ok] = k
        right = np.choose(level, correct)
        return _LevelRun(int((correct[-1] & ~right).sum()), int((right & ~correct[-1]).sum()),
                         float(right.mean()), np.bincount(level, minlength=last + 1).tolist())
    path = _level_path(scores, policy.higher_is_confident)
    good, tested, _ = risk.fixed_sequence(path, evaluate, n, allowed, confidence)
    threshold, run = good[-1] if good else (None, evaluate(None))
    return [threshold] * last + [None], {
        "method": "calibrate-cascade", "samples": int(n),
        "max_accuracy_drop_points": float(max_accuracy_drop),
        "accuracy_full": float(correct[-1].mean()), "accuracy_cascade": run.accuracy,
        "leaving_per_level": run.leaving,
        "risk": risk.risk_record(run.losses, run.gains, n, confidence, reference=threshold is None,
                                 path="label-free common threshold", settings_tested=tested,
                                 settings_certified=len(good))}


def convert_cascade(models, resolutions, images, output, labels=None, calibration_images=None,
                    max_accuracy_drop=0.5, policy="max-softmax", resize="area", crop=None,
                    preprocessing=None, force=False, progress=True, confidence=0.99,
                    **convert_kwargs):
    """Convert a model at several input resolutions into one cascade bundle at ``output``.

    ``models``: one model whose weights serve every resolution (fully convolutional with
    global pooling), or a list with one model per resolution; multi-exit models keep their
    exits inside each level. ``resolutions``: ints or ``(height, width)``, cheapest first; the
    last is the full resolution. ``images``: raw example images ``(N, H, W[, C])`` or, as
    ``convert``'s data holds them, ``(N, C, H, W)`` (any size:
    the pipeline crops and resizes them with OpenCV). ``calibration_images`` + ``labels``:
    raw labelled images to choose the thresholds (else they stay null, and every sample
    climbs to the last level), certified within ``max_accuracy_drop`` points of the full
    resolution with probability ``confidence`` (see :func:`choose_thresholds`). ``resize``:
    OpenCV interpolation (area, linear, nearest, cubic); ``crop``: central fraction kept
    before resizing. ``preprocessing``: scale / mean /
    std after resizing (required: the pipeline starts from raw pixels). Other keyword
    arguments go to :func:`~edgesdk.converters.convert` for every level. The bundle is
    written whole or not at all."""
    from edgesdk.converters.convert import convert
    from edgesdk.runtime.cascade import as_raw_images, resize_images
    from edgesdk.runtime.inputs import preprocess
    from edgesdk.runtime.policies import get_policy
    sizes = _resolutions(resolutions)
    models = list(models) if isinstance(models, (list, tuple)) else [models] * len(sizes)
    if len(models) != len(sizes):
        raise InputError("{} models for {} resolutions: give one model, or one per "
                         "resolution".format(len(models), len(sizes)))
    if resize not in RESIZE_MODES:
        raise InputError("resize '{}' is not one of {}".format(resize, ", ".join(RESIZE_MODES)))
    if crop is not None and not 0 < crop <= 1:
        raise InputError("crop is the central fraction kept, in (0, 1], got {!r}".format(crop))
    if preprocessing is None:
        raise InputError("a cascade starts from raw pixels: give preprocessing (scale, mean, "
                         "std) to apply after resizing")
    pol = get_policy(policy)
    if (labels is None) != (calibration_images is None):
        raise InputError("thresholds need both calibration_images and labels")
    images = as_raw_images(images, "the example images")
    if labels is not None:   # refuse an uncertifiable target before converting anything
        from edgesdk.converters import risk
        risk.check_confidence(confidence)
        risk.require_certifiable(max_accuracy_drop / 100.0, len(labels), confidence,
                                 "cascade calibration")
    spec = {"pipeline": {"resize": resize, "crop": crop}}
    ids = ["r{}x{}".format(*s) for s in sizes]
    output = os.path.abspath(output)
    with bundle_io.staging_directory(output, force=force) as tmp:
        # Inside the staging directory: a killed build leaves nothing that the next write's
        # recovery does not remove (see edgesdk.atomic.recover).
        scratch = tempfile.mkdtemp(prefix=".cascade-", dir=tmp)
        for k, (model, size) in enumerate(zip(models, sizes)):
            example = preprocess(resize_images(images, size, resize, crop),
                                 {"name": "input", "preprocessing": preprocessing})
            last = k == len(sizes) - 1
            dest = os.path.join(scratch if last else os.path.join(tmp, VARIANTS),
                                ids[k] + bundle_io.SUFFIX)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            convert(_as_multi_exit(model), example, dest, progress=progress,
                    preprocessing=preprocessing, name=ids[k], **convert_kwargs)
            if last:  # the full resolution is the outer bundle itself
                for name in os.listdir(dest):
                    os.replace(os.path.join(dest, name), os.path.join(tmp, name))
        shutil.rmtree(scratch)
        draft = BundleDraft(tmp, bundle_io.read_bundle(tmp, verify=False).manifest)
        _finish(draft, spec, ids, sizes, policy, pol, labels, calibration_images,
                max_accuracy_drop, confidence)
        draft.finish()
    return spec


def _finish(draft, spec, ids, sizes, policy, pol, labels, calibration_images, max_accuracy_drop,
            confidence):
    """Write the cascade section, then choose and write the thresholds if labels are given."""
    from edgesdk.runtime.cascade import Cascade
    last = len(sizes) - 1
    spec["levels"] = [{"id": i, "resolution": list(size), "policy": policy, "threshold": None,
                       "bundle": "." if k == last else "{}/{}{}".format(VARIANTS, i,
                                                                       bundle_io.SUFFIX)}
                      for k, (i, size) in enumerate(zip(ids, sizes))]
    _write_cascade(draft, spec)
    if labels is None:
        return
    cascade = Cascade(draft.bundle())
    thresholds, record = choose_thresholds(cascade.level_probabilities(calibration_images),
                                           labels, max_accuracy_drop, pol, confidence)
    for level, t in zip(spec["levels"], thresholds):
        level["threshold"] = t
    spec["chosen_from"] = record


def _write_cascade(draft, spec):
    """Put ``spec`` in the outer manifest and hash every inner bundle's files there."""
    inner = []
    for d, _, files in os.walk(draft.path(VARIANTS)):
        inner += [os.path.relpath(os.path.join(d, f), draft.root).replace(os.sep, "/")
                  for f in files]
    draft.remove_files(VARIANTS + "/")
    draft.add_files(inner)
    draft.manifest["cascade"] = spec
