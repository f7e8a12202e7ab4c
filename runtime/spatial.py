"""Spatially sparse execution of a masked residual block: work scales with the active area.

A masked block computes ``y = x + keep * branch(x)``, where a small masker graph decides per
``G x G`` output region whether the region is computed (``keep``: sigmoid of its logit at or
above the threshold). Run densely, every region is computed and most are then thrown away.
Here the runtime gathers each active region with its receptive-field halo into a batch of
patches, runs the branch's convolutions on that batch only (one graph whose batch dimension
is the patch count: padding-free convolutions, the zero padding at the image border given by
a validity mask input), and adds the results back into a copy of ``x``. The gather and the
scatter are numpy views and one fancy-indexed copy each, outside the graphs, so the patch
graph holds nothing but dense convolutions (no NonZero: TensorRT 8.2 parses it).
Python 3.6 / numpy 1.19 compatible.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from edgesdk.errors import BundleError


def _windows(padded, size, step):
    """``(N, rows, cols, C, size, size)`` view of the ``size x size`` windows of ``padded``
    (N, C, H, W) every ``step`` pixels."""
    n, c, h, w = padded.shape
    rows, cols = (h - size) // step + 1, (w - size) // step + 1
    sn, sc, sh, sw = padded.strides
    return as_strided(padded, (n, rows, cols, c, size, size),
                      (sn, sh * step, sw * step, sc, sh, sw), writeable=False)


def gather(x, keep, granularity, halo):
    """The active regions of ``x`` (N, C, H, W) with their halo: ``(patches (P, C, S, S),
    valid (P, 1, S, S), (n, i, j) indices)`` with ``S = G + 2 * halo``; ``keep`` (N, H/G, W/G)
    bool. ``valid`` is 1 inside the image, 0 in the zero padding around it."""
    n_idx, i_idx, j_idx = np.nonzero(keep)
    size = granularity + 2 * halo
    pad = ((0, 0), (0, 0), (halo, halo), (halo, halo))
    padded = np.pad(x, pad, mode="constant")
    patches = np.ascontiguousarray(_windows(padded, size, granularity)[n_idx, i_idx, j_idx])
    inside = np.pad(np.ones((1, 1) + x.shape[2:], dtype=x.dtype), pad, mode="constant")
    valid = np.ascontiguousarray(_windows(inside, size, granularity)[0, i_idx, j_idx])
    return patches, valid, (n_idx, i_idx, j_idx)


def scatter_add(x, results, index, granularity):
    """A copy of ``x`` with ``results`` (P, C, G, G) added at the regions ``index``."""
    out = np.array(x, dtype=np.float32, copy=True)
    n, c, h, w = out.shape
    g = granularity
    regions = out.reshape(n, c, h // g, g, w // g, g).transpose(0, 2, 4, 1, 3, 5)
    regions[index] += results   # regions are distinct: no index repeats
    return out


class SpatialStage(object):
    """A stage that is one masked residual block, run on its active regions only.

    ``dense``: the stage graph (the whole masked block); ``masker``: state -> (N, 1, H/G,
    W/G) logits; ``patch``: (patches, valid) -> branch output (P, C, G, G). Counts active and
    total regions (``active``, ``regions``) for reports and tests; ``enabled`` False runs
    the dense graph (to compare)."""

    def __init__(self, sid, dense, masker, patch, granularity, halo, threshold):
        self.id, self.dense, self.masker, self.patch = sid, dense, masker, patch
        self.granularity, self.halo, self.threshold = int(granularity), int(halo), threshold
        # sigmoid(z) >= t  <=>  z >= log(t / (1 - t)): compare logits, no exp per region
        t = float(threshold)
        self.logit = -np.inf if t <= 0 else np.inf if t >= 1 else float(np.log(t / (1 - t)))
        self.enabled = True
        self.active = self.regions = 0
        self.device_arrays = False

    def keep(self, state):
        """The (N, H/G, W/G) bool map of regions to compute."""
        logits = np.asarray(self.masker.run(state)[0])
        x = state[0]
        want = (len(x), 1, x.shape[2] // self.granularity, x.shape[3] // self.granularity)
        if logits.shape != want:
            raise BundleError("the masker of stage '{}' gave shape {}, expected {}".format(
                self.id, list(logits.shape), list(want)))
        return logits[:, 0] >= self.logit

    def run(self, state):
        if not self.enabled or len(state[0]) == 0:
            return self.dense.run(state)
        x = np.asarray(state[0])
        keep = self.keep(state)
        self.active += int(keep.sum())
        self.regions += int(keep.size)
        if not keep.any():
            return [np.array(x, dtype=np.float32, copy=True)]
        if keep.all():   # the same sum, without the halos' extra work
            return self.dense.run(state)
        patches, valid, index = gather(x, keep, self.granularity, self.halo)
        results = self.patch.run([patches, valid])[0]
        return [scatter_add(x, results, index, self.granularity)]
