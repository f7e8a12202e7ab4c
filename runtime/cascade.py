"""Resolution cascades: run the cheapest resolution first, escalate only the unconfident.

A cascade bundle is a normal bundle (the full-resolution model, the last level) with a
``cascade`` section listing cheaper levels, each a complete bundle inside it
(``variants/ID/``, every file hashed by the outer manifest as well). The input pipeline is
OpenCV's: raw images of any size are centre-cropped (``crop``), resized to each level's
resolution with the manifest's interpolation, then normalized with the level's preprocessing.
Each level runs with its own early exits; a sample leaves the cascade at the first level whose
answer meets that level's threshold. Python 3.6 / numpy 1.19 compatible.
"""
import time

import numpy as np

from edgesdk.bundle import read_bundle
from edgesdk.deps import require
from edgesdk.errors import InputError
from edgesdk.runtime.engine import EdgeModel, RunResult, stage_ms_table
from edgesdk.runtime.inputs import preprocess
from edgesdk.runtime.policies import get_policy

_INTERPOLATION = {"area": "INTER_AREA", "linear": "INTER_LINEAR", "nearest": "INTER_NEAREST",
                  "cubic": "INTER_CUBIC"}


def as_raw_images(x, where="the images"):
    """Raw images as the cascade pipeline takes them, ``(N, H, W)`` or ``(N, H, W, C)``, from
    either layout: also ``(N, C, H, W)`` with 1, 3 or 4 channels (how ``convert``'s data
    holds them). Float arrays are refused: they are model input already (normalized), and
    each level normalizes after resizing."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        raise InputError("{} are floats (model input): a cascade starts from raw pixels, each "
                         "level crops, resizes and normalizes them; give integer images".format(
                             where))
    if x.ndim == 4 and x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
        x = x.transpose(0, 2, 3, 1)   # NCHW -> NHWC
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


def resize_images(raw, size, mode="area", crop=None):
    """Raw images ``(N, H, W)`` or ``(N, H, W, C)``, centre-cropped to the fraction ``crop``
    of each side (None: whole), resized to ``size`` = ``(height, width)`` with OpenCV."""
    cv2 = require("cv2", "images", "resize images for a resolution cascade")
    raw = np.asarray(raw)
    if raw.ndim not in (3, 4):
        raise InputError("raw images must be (N, H, W) or (N, H, W, C), got shape {}".format(
            list(raw.shape)))
    if raw.dtype.kind not in "uif":
        raise InputError("raw images must be numeric, got dtype {}".format(raw.dtype))
    h, w = raw.shape[1:3]
    if crop is not None:
        ch, cw = max(1, int(round(h * crop))), max(1, int(round(w * crop)))
        top, left = (h - ch) // 2, (w - cw) // 2
        raw = raw[:, top:top + ch, left:left + cw]
    if raw.dtype == np.float16 or raw.dtype.kind == "i" and raw.dtype.itemsize > 2:
        raw = raw.astype(np.float32)  # types cv2.resize does not take
    height, width = size
    out = np.empty((raw.shape[0], height, width) + raw.shape[3:], dtype=raw.dtype)
    flag = getattr(cv2, _INTERPOLATION[mode])
    for i, image in enumerate(raw):
        if image.shape[:2] == (height, width):
            out[i] = image
        else:
            out[i] = cv2.resize(image, (width, height), interpolation=flag).reshape(out.shape[1:])
    return out


class Cascade(object):
    """A loaded resolution cascade; create with :func:`load_cascade`.

    ``levels``: an :class:`EdgeModel` per level, cheapest first; ``resolutions``;
    ``thresholds`` (None for the last level).
    """

    def __init__(self, bundle, threads=None):
        spec = bundle.manifest.get("cascade")
        if not spec:
            raise InputError("{} is not a resolution cascade (no 'cascade' in its manifest); "
                             "run it with load_bundle()".format(bundle.root))
        self.bundle = bundle
        self.levels, self.ids, self.resolutions = [], [], []
        for level in spec["levels"]:
            # Every file of an inner bundle is hashed by the outer manifest, checked on load.
            sub = bundle if level["bundle"] == "." else read_bundle(
                bundle.path(level["bundle"]), verify=False)
            self.levels.append(EdgeModel(sub, threads=threads))
            self.ids.append(level["id"])
            self.resolutions.append(tuple(level["resolution"]))
        # The builds each level's graphs run with, as every RunResult reports them.
        self.ran = dict(zip(self.ids, [m.ran for m in self.levels]))
        self.policies = [get_policy(level["policy"]) for level in spec["levels"]]
        self.thresholds = [p.check_threshold(level["threshold"], self.levels[-1].num_classes,
                                             "manifest.json: $.cascade.levels[{}]".format(k))
                           for k, (p, level) in enumerate(zip(self.policies, spec["levels"]))]
        self.resize = spec["pipeline"]["resize"]
        self.crop = spec["pipeline"].get("crop")

    def prepare(self, raw, level):
        """Model input of level ``level`` for raw images: crop, resize, normalize."""
        model = self.levels[level]
        resized = resize_images(raw, self.resolutions[level], self.resize, self.crop)
        return preprocess(resized, model.input_spec)

    def run(self, raw, thresholds=None):
        """Run raw images ``(N, H, W[, C])`` (or ``(N, C, H, W)``, see :func:`as_raw_images`)
        through the cascade; returns a :class:`RunResult` whose ``exit_index`` is the level
        each sample left at and ``stage_ms`` the time of each level (its preprocessing
        included)."""
        thr = self._thresholds(thresholds)
        raw = as_raw_images(raw)
        n, last = len(raw), len(self.levels) - 1
        classes = self.levels[-1].num_classes
        probs = np.empty((n, classes), dtype=np.float32)
        exit_index = np.empty(n, dtype=np.int64)
        alive, timeline, clock = np.arange(n), [], time.perf_counter
        start = clock()
        for k, model in enumerate(self.levels):
            if alive.size == 0:
                break
            t0 = clock()
            p = model.run(self.prepare(raw[alive], k)).probabilities
            if k == last:
                done = np.ones(alive.size, dtype=bool)
            elif thr[k] is None:
                done = np.zeros(alive.size, dtype=bool)
            else:
                done = self.policies[k].exits(p, thr[k])
            probs[alive[done]] = p[done]
            exit_index[alive[done]] = k
            timeline.append((alive, clock() - t0))
            alive = alive[~done]
        return RunResult(probs.argmax(axis=1), probs, exit_index,
                         stage_ms_table(timeline, n, len(self.levels)),
                         (clock() - start) * 1000.0,
                         builds=self.ran)

    def level_probabilities(self, raw):
        """Every level's answer for every image (no escalation): a list of (N, C) arrays,
        for calibrating the thresholds."""
        raw = as_raw_images(raw)
        return [model.run(self.prepare(raw, k)).probabilities
                for k, model in enumerate(self.levels)]

    def _thresholds(self, thresholds):
        if thresholds is None:
            return list(self.thresholds)
        thresholds = list(thresholds)
        if len(thresholds) != len(self.levels) - 1:
            raise InputError("expected {} thresholds (one per level but the last, None to "
                             "escalate every sample), got {}".format(len(self.levels) - 1,
                                                                      len(thresholds)))
        classes = self.levels[-1].num_classes
        return [p.check_threshold(t, classes, "threshold of level {}".format(k))
                for k, (p, t) in enumerate(zip(self.policies, thresholds))] + [None]


def load_cascade(path, threads=None, verify=True):
    """Open and verify a cascade bundle (every level's files) and load its levels."""
    return Cascade(read_bundle(path, verify=verify), threads=threads)


def cascade_levels(path):
    """``[(level id, bundle path)]`` of the resolution cascade at ``path``, cheapest first
    (the last is ``path`` itself), or ``[]`` for a plain bundle (its manifest read, files not
    hashed: the caller loads what it runs checked)."""
    bundle = read_bundle(path, verify=False)
    spec = bundle.manifest.get("cascade")
    return [(level["id"], path if level["bundle"] == "." else bundle.path(level["bundle"]))
            for level in spec["levels"]] if spec else []


def is_cascade(path):
    """Whether the bundle at ``path`` is a resolution cascade."""
    return bool(cascade_levels(path))


def raw_inputs(path, cascade):
    """``(raw images, labels or None, sample names)`` for a cascade from an .npz (integer
    ``x``, either layout, see :func:`as_raw_images`) or a folder of images (read at the full
    level's size; each level resizes from there)."""
    import os
    from edgesdk.runtime.datafiles import load_image_folder, load_npz
    if os.path.isdir(path):
        raw, names = load_image_folder(path, cascade.levels[-1].input_spec)
        return as_raw_images(raw, path), None, names
    if not os.path.isfile(path) or not path.endswith(".npz"):
        raise InputError("input '{}' must be an .npz file or a folder of images".format(path))
    x, y = load_npz(path, cascade.levels[-1].memory.limit)
    return as_raw_images(x, "{}'s x".format(path)), y, [str(i) for i in range(len(x))]
