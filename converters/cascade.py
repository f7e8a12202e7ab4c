"""Build a resolution cascade: one model (shared weights) or one per resolution, converted at
each resolution into one bundle, with thresholds chosen on labelled calibration images.

The last (largest) resolution is the bundle itself; cheaper levels are complete bundles under
``variants/ID/``, hashed by the outer manifest too (see :mod:`edgesdk.runtime.cascade`).
Thresholds: level by level, cheapest first, the lowest threshold whose cascade accuracy on the
calibration images stays within ``max_accuracy_drop`` points of the full-resolution model
alone, the later levels answering for every sample not let out.
"""
import os
import shutil
import tempfile

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.errors import InputError
from edgesdk.manifest import RESIZE_MODES

VARIANTS = "variants"


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


def choose_thresholds(level_probs, labels, max_accuracy_drop, policy):
    """Per-level thresholds (None for the last level) and a record of the choice, from every
    level's probabilities on labelled calibration samples (see the module doc)."""
    labels = np.asarray(labels)
    n = len(labels)
    correct = [p.argmax(axis=1) == labels for p in level_probs]
    full = float(correct[-1].mean())
    target = full - max_accuracy_drop / 100.0
    alive = np.ones(n, dtype=bool)
    settled = 0  # correct answers of samples that left at earlier levels
    thresholds, share = [], []
    for k in range(len(level_probs) - 1):
        score = policy.score(level_probs[k])
        if not policy.higher_is_confident:
            score = -score
        idx = np.flatnonzero(alive)
        order = idx[np.argsort(-score[idx], kind="stable")]
        # Letting the j most confident out: they answer at level k, the rest at the last.
        gain = np.concatenate([[0], np.cumsum(correct[k][order])])
        rest = np.concatenate([np.cumsum(correct[-1][order][::-1])[::-1], [0]])
        accuracy = (settled + gain + rest) / float(n)
        ok = np.flatnonzero(accuracy >= target - 1e-12)
        j = int(ok.max())
        # Ties at the cut: keep only the scores strictly above the first one left in.
        while 0 < j < len(order) and score[order[j - 1]] == score[order[j]]:
            j -= 1
        if j == 0:
            thresholds.append(None)
            share.append(0)
            continue
        cut = float(score[order[j - 1]])
        thresholds.append(cut if policy.higher_is_confident else -cut)
        out = order[:j]
        settled += int(correct[k][out].sum())
        alive[out] = False
        share.append(int(j))
    accuracy = (settled + int(correct[-1][alive].sum())) / float(n)
    return thresholds + [None], {
        "method": "calibrate-cascade", "samples": int(n),
        "max_accuracy_drop_points": float(max_accuracy_drop),
        "accuracy_full": full, "accuracy_cascade": accuracy,
        "leaving_per_level": share + [int(alive.sum())]}


def convert_cascade(models, resolutions, images, output, labels=None, calibration_images=None,
                    max_accuracy_drop=0.5, policy="max-softmax", resize="area", crop=None,
                    preprocessing=None, force=False, progress=True, **convert_kwargs):
    """Convert a model at several input resolutions into one cascade bundle at ``output``.

    ``models``: one model whose weights serve every resolution (fully convolutional with
    global pooling), or a list with one model per resolution; multi-exit models keep their
    exits inside each level. ``resolutions``: ints or ``(height, width)``, cheapest first; the
    last is the full resolution. ``images``: raw example images ``(N, H, W[, C])`` (any size:
    the pipeline crops and resizes them with OpenCV). ``calibration_images`` + ``labels``:
    raw labelled images to choose the thresholds (else they stay null, and every sample
    climbs to the last level). ``resize``: OpenCV interpolation (area, linear, nearest,
    cubic); ``crop``: central fraction kept before resizing. ``preprocessing``: scale / mean /
    std after resizing (required: the pipeline starts from raw pixels). Other keyword
    arguments go to :func:`~edgesdk.converters.convert` for every level. The bundle is
    written whole or not at all."""
    from edgesdk.converters.convert import convert
    from edgesdk.runtime.cascade import resize_images
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
        _finish(tmp, spec, ids, sizes, policy, pol, labels, calibration_images,
                max_accuracy_drop)
    return bundle_io.read_bundle(output).manifest["cascade"]


def _finish(tmp, spec, ids, sizes, policy, pol, labels, calibration_images, max_accuracy_drop):
    """Write the cascade section, then choose and write the thresholds if labels are given."""
    from edgesdk.runtime.cascade import Cascade
    last = len(sizes) - 1
    spec["levels"] = [{"id": i, "resolution": list(size), "policy": policy, "threshold": None,
                       "bundle": "." if k == last else "{}/{}{}".format(VARIANTS, i,
                                                                       bundle_io.SUFFIX)}
                      for k, (i, size) in enumerate(zip(ids, sizes))]
    _write_cascade(tmp, spec)
    if labels is None:
        return
    cascade = Cascade(bundle_io.read_bundle(tmp))
    thresholds, record = choose_thresholds(cascade.level_probabilities(calibration_images),
                                           labels, max_accuracy_drop, pol)
    for level, t in zip(spec["levels"], thresholds):
        level["threshold"] = t
    spec["chosen_from"] = record
    _write_cascade(tmp, spec)


def _write_cascade(root, spec):
    """Put ``spec`` in the outer manifest and hash every inner bundle's files there."""
    manifest = bundle_io.read_bundle(root, verify=False).manifest
    inner = []
    for d, _, files in os.walk(os.path.join(root, VARIANTS)):
        inner += [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/") for f in files]
    manifest["files"] = {k: v for k, v in manifest["files"].items()
                         if not k.startswith(VARIANTS + "/")}
    manifest["files"].update(bundle_io.hash_files(root, sorted(inner)))
    manifest["cascade"] = spec
    bundle_io.write_manifest(root, manifest)
