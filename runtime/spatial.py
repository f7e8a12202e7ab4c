"""Spatially sparse execution of a masked residual block: work scales with the active area.

A masked block computes ``y = x + keep * branch(x)``, where a small masker graph decides per
``G x G`` output region whether the region is computed (``keep``: sigmoid of its logit at or
above the threshold). Run densely, every region is computed and most are then thrown away.
Here the runtime gathers the active regions with their receptive-field halo (neighbouring
regions of a row as one tile), lays the tiles side by side in one mosaic image, runs the
block on the mosaic (one graph with a dynamic width: padding-free convolutions, the zero
padding at the image border given by the gathered zeros and, for convolutions between two
padding ones, a validity mask input; the residual sum included), and copies each patch's
``G x G`` output into a copy of ``x``. A mosaic rather than a batch of patches: convolution
kernels are efficient on one wide image and not on many small ones (a batch of 18x18
patches ran slower than the whole 56x56 map). Outputs whose receptive field crosses two
patches are computed and dropped, the same work as the halos. The gather and the scatter
are numpy slice copies outside the graph, so the graph holds only dense convolutions (no
NonZero: TensorRT 8.2 parses it).
Python 3.6 / numpy 1.19 compatible.
"""
import threading

import numpy as np

from edgesdk.errors import BundleError
from edgesdk.runtime.policies import sigmoid_limit


def runs(keep):
    """The active regions as runs along rows: ``[(n, i, j0, j1)]``, regions ``j0 <= j < j1``
    of row ``i`` of image ``n`` (neighbours share one tile: no halo between them)."""
    n, rows, cols = keep.shape
    width = cols + 2
    padded = np.zeros((n * rows, width), dtype=np.int8)   # a zero before and after each row
    padded[:, 1:-1] = keep.reshape(n * rows, cols)
    # Starts (0 -> 1) and ends (1 -> 0) in the same row-major order: they pair up. Flat
    # indices into the padded rows: 2-7x faster than per-axis argwhere (8 vs 14 us at 4x4).
    step = np.diff(padded.ravel())
    starts, ends = np.flatnonzero(step == 1), np.flatnonzero(step == -1)
    row = starts // width
    return list(zip((row // rows).tolist(), (row % rows).tolist(), (starts % width).tolist(),
                    (ends % width).tolist()))


def gather(x, keep, granularity, halo, with_valid=True):
    """The active regions of ``x`` (N, C, H, W) with their halo, side by side:
    ``(mosaic (1, C, S, width), valid (1, 1, S, width) or None, [(n, i, j0, j1, column)])``
    with ``S = G + 2 * halo``, one tile per run of neighbouring regions (:func:`runs`), the
    run's tile starting at ``column``; ``keep`` (N, H/G, W/G) bool. The mosaic is zero where
    a tile's halo leaves the image; ``valid`` (made when ``with_valid``) is 1 inside the
    image and 0 there.

    Slice copies, one per run: measured faster than fancy indexing over a strided view of
    all windows (0.03 vs 0.3 ms for 8 regions of 32 x 18 x 18)."""
    n, c, h, w = x.shape
    g, size = granularity, granularity + 2 * halo
    tiles = runs(keep)
    width = sum((j1 - j0) * g + 2 * halo for _, _, j0, j1 in tiles)
    mosaic = np.zeros((1, c, size, width), dtype=np.float32)
    valid = np.zeros((1, 1, size, width), dtype=np.float32) if with_valid else None
    placed, column = [], 0
    for b, i, j0, j1 in tiles:
        span = (j1 - j0) * g + 2 * halo
        top, left = i * g - halo, j0 * g - halo          # the tile's corner in the image
        r0, r1 = max(top, 0), min(top + size, h)
        c0, c1 = max(left, 0), min(left + span, w)
        rows = slice(r0 - top, r1 - top)
        cols = slice(column + c0 - left, column + c1 - left)
        mosaic[0, :, rows, cols] = x[b, :, r0:r1, c0:c1]
        if with_valid:
            valid[0, 0, rows, cols] = 1.0
        placed.append((b, i, j0, j1, column))
        column += span
    return mosaic, valid, placed


def scatter(x, out, placed, granularity, add=False):
    """A copy of ``x`` with each run's region replaced by its result (``add``: with the
    result added, for a patch graph that gives the branch alone): ``out`` is the patch
    graph's output on the mosaic, ``(1, C, G, width - 2 * halo)``, a run's starting at its
    tile's column."""
    y = np.array(x, dtype=np.float32, copy=True)
    g = granularity
    for b, i, j0, j1, column in placed:
        region = out[0, :, :, column:column + (j1 - j0) * g]
        if add:
            y[b, :, i * g:(i + 1) * g, j0 * g:j1 * g] += region
        else:
            y[b, :, i * g:(i + 1) * g, j0 * g:j1 * g] = region
    return y


class SpatialStage(object):
    """A stage that is one masked residual block, run on its active regions only.

    ``dense``: the stage graph (the whole masked block); ``masker``: state -> (N, 1, H/G,
    W/G) logits; ``patch``: the mosaic (:func:`gather`; and its validity mask where
    ``with_valid``) -> the block's output on the mosaic's regions (with ``adds`` the
    branch's alone, which bundles of earlier versions give)
    (:func:`gather`). Counts active and total regions (``active``, ``regions``, under a lock:
    several threads may run one model) for reports and tests; ``enabled`` False runs the
    dense graph (to compare)."""

    def __init__(self, sid, dense, masker, patch, granularity, halo, threshold,
                 with_valid=True, adds=False):
        self.id, self.dense, self.masker, self.patch = sid, dense, masker, patch
        self.with_valid, self.adds = with_valid, adds
        self.granularity, self.halo = int(granularity), int(halo)
        self.threshold = threshold
        self.enabled = True
        self.active = self.regions = 0
        self.device_arrays = False
        self._count_lock = threading.Lock()

    @property
    def threshold(self):
        """The keep probability at or above which a region is computed."""
        return self._threshold

    @threshold.setter
    def threshold(self, value):
        self._threshold, self.logit = value, sigmoid_limit(value)   # compared as logits

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
        keep = self.keep(state)
        with self._count_lock:
            self.active += int(keep.sum())
            self.regions += int(keep.size)
        return self.run_regions(state, keep)

    def run_regions(self, state, keep):
        """The block's output computing the regions ``keep`` (N, H/G, W/G) says."""
        x = np.asarray(state[0])
        if not keep.any():
            return [np.array(x, dtype=np.float32, copy=True)]
        if keep.all():   # the same sum, without the halos' extra work
            return self.dense.run(state)
        mosaic, valid, placed = gather(x, keep, self.granularity, self.halo, self.with_valid)
        out = np.asarray(self.patch.run([mosaic] + ([valid] if self.with_valid else []))[0])
        return [scatter(x, out, placed, self.granularity, add=self.adds)]


def region_pattern(n, rows, cols, fraction, seed=0):
    """A keep map (n, rows, cols) with ``round(fraction * size)`` regions on, placed at
    random (fixed ``seed``): what the profiler times the block on at each active fraction."""
    size = n * rows * cols
    keep = np.zeros(size, dtype=bool)
    keep[np.random.RandomState(seed).permutation(size)[:int(round(fraction * size))]] = True
    return keep.reshape(n, rows, cols)
