"""Gated residual blocks inside a stage: each sample computes or skips each block's branch.

A stage with gated blocks (see :mod:`edgesdk.converters.gated`) runs as a chain of graphs:
per block a *segment* (everything since the previous block, then the block's gate and
shortcut: state ``h``, a skip logit per sample, the shortcut's output) and a *branch*
(``shortcut + branch(h)``), which runs only on the samples whose ``sigmoid(logit)`` is below
the block's threshold; the others keep the shortcut's output (the block's residual branch is
skipped, its shortcut kept, so downsampling blocks skip too). A *tail* graph runs what
follows the last block. The gate costs no call of its own: it is an output of the segment.

With ``enabled`` False (or gates dropped at conversion because they cost more than they
saved) the stage's own graph runs, every branch computed. The pieces are ONNX graphs run by
ONNX Runtime on the host CPU, whichever executor runs the stage's own graph.
Python 3.6 / numpy 1.19 compatible.
"""
import threading

import numpy as np


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


class GatedBlock(object):
    """One gated block's two graphs, its skip threshold, its branch's MACs per sample and
    what it skipped (samples)."""

    def __init__(self, bid, segment, branch, threshold, macs, shortcut):
        self.id, self.segment, self.branch = bid, segment, branch
        self.threshold, self.macs, self.shortcut = threshold, macs, shortcut
        self.skipped = self.ran = 0


class GatedStage(object):
    """A stage run block by block with per-sample skipping; runs like a stage graph.

    ``stage``: the stage's own (dense) graph; ``blocks``: :class:`GatedBlock` in order;
    ``tail``: the graph after the last block, or None. ``force_run`` makes every sample
    compute every branch through the pieces (what the profiler times). Counts are kept under
    a lock: several threads may run one model."""

    adaptive = True   # EdgeModel.adaptive_stages() lists it

    def __init__(self, sid, stage, blocks, tail):
        self.id, self.stage, self.blocks, self.tail = sid, stage, list(blocks), tail
        self.enabled, self.force_run = True, False
        self._count_lock = threading.Lock()

    @property
    def threshold(self):
        """The blocks' common skip threshold (None when they differ)."""
        values = {b.threshold for b in self.blocks}
        return values.pop() if len(values) == 1 else None

    @threshold.setter
    def threshold(self, value):
        for b in self.blocks:
            b.threshold = value

    @property
    def skipped(self):
        return sum(b.skipped for b in self.blocks)

    def reset_counts(self):
        with self._count_lock:
            for b in self.blocks:
                b.skipped = b.ran = 0

    def skip_counts(self):
        """``{block id: samples that skipped it}`` since the last reset."""
        return {b.id: b.skipped for b in self.blocks}

    def macs_skipped(self, stage_macs):
        """MACs the skipped branches did not compute, summed over samples (``stage_macs``,
        the whole stage's per sample, is not needed: each block knows its branch's)."""
        return sum(b.skipped * b.macs for b in self.blocks)

    def run(self, state):
        n = len(state[0])
        if not self.enabled or n == 0:
            return self.stage.run(state)
        z = state
        for b in self.blocks:
            out = b.segment.run(z)
            h, short = out[0], out[2] if b.shortcut else out[0]
            run = None if self.force_run else \
                _sigmoid(np.asarray(out[1]).reshape(n)) < b.threshold
            if run is None or run.all():
                z = b.branch.run(out[:1] + out[2:])
                ran = n
            else:
                ran = int(run.sum())
                merged = np.array(short)   # skipped rows keep the shortcut's output
                if ran:
                    part = [np.asarray(t)[run] for t in out[:1] + out[2:]]
                    merged[run] = b.branch.run(part)[0]
                z = [merged]
            with self._count_lock:
                b.skipped += n - ran
                b.ran += ran
        return self.tail.run(z) if self.tail is not None else list(z)
