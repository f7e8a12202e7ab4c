"""Gated residual blocks inside a stage: each sample computes or skips each block's branch.

A stage with gated blocks (see :mod:`edgesdk.converters.gated`) runs as a chain of graphs:
the *entry* gives the first block's input ``h``, a skip logit per sample and the shortcut's
output; then per block, the samples whose skip logit is below the threshold's logit
(``sigmoid(logit) < threshold``) run *run* (``shortcut + branch(h)``, then on to the next
block's gate or the stage's end) and the others *skip* (the same continuation from the
shortcut alone): the residual branch is skipped, the shortcut kept, so downsampling blocks
skip too. The gate costs no call of its own, and at batch 1 each block is one call.

With ``enabled`` False (or gates dropped at conversion because they cost more than they
saved) the stage's own graph runs, every branch computed. These graphs are ONNX graphs run by
ONNX Runtime on the host CPU, whichever executor runs the stage's own graph.
Python 3.6 / numpy 1.19 compatible.
"""
import threading

import numpy as np

from edgesdk.runtime.policies import sigmoid_limit


class GatedBlock(object):
    """One gated block: its run and skip graphs (skip None: nothing follows it, the shortcut's
    output is the stage's), whether it has a projection shortcut, its skip threshold, the MACs
    per sample skipping it saves, and what it skipped and ran (samples)."""

    def __init__(self, bid, run, skip, threshold, macs, shortcut):
        self.id, self.run, self.skip, self.macs, self.shortcut = bid, run, skip, macs, shortcut
        self.threshold = threshold
        self.skipped = self.ran = 0

    @property
    def threshold(self):
        return self._threshold

    @threshold.setter
    def threshold(self, value):
        self._threshold, self.limit = value, sigmoid_limit(value)   # skip at or above


class GatedStage(object):
    """A stage run block by block with per-sample skipping; runs like a stage graph.

    ``stage``: the stage's own (dense) graph; ``entry``: the graph up to the first block's
    gate; ``blocks``: :class:`GatedBlock` in order. ``force_run`` makes every sample
    compute every branch through the pieces (what the profiler times). Counts are kept under
    a lock: several threads may run one model."""

    adaptive = True   # EdgeModel.adaptive_stages() lists it

    def __init__(self, sid, stage, entry, blocks):
        self.id, self.stage, self.entry, self.blocks = sid, stage, entry, list(blocks)
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
        out, ran_per_block = self.entry.run(state), []
        for b in self.blocks:
            h = out[0]
            short = out[2] if b.shortcut else h
            run_in = [h, short] if b.shortcut else [h]
            # One sample (the common case on a board): a float compare, no array work, which
            # costs as much as a small block's graph call. The decision is made under
            # force_run too, so the profiler's block loop includes its cost.
            if n == 1:
                run, ran = None, int(float(np.asarray(out[1]).item()) < b.limit)
            else:
                run = np.asarray(out[1]).reshape(n) < b.limit
                ran = int(np.count_nonzero(run))
            if self.force_run or ran == n:
                out, ran = b.run.run(run_in), n
            elif ran == 0:
                out = b.skip.run([short]) if b.skip is not None else [short]
            else:
                rest = ~run
                skipped = b.skip.run([short[rest]]) if b.skip is not None else [short[rest]]
                computed = b.run.run([t[run] for t in run_in])
                out = []
                for c, k in zip(computed, skipped):
                    merged = np.empty((n,) + c.shape[1:], dtype=c.dtype)
                    merged[run], merged[rest] = c, k
                    out.append(merged)
            ran_per_block.append(ran)
        with self._count_lock:
            for b, ran in zip(self.blocks, ran_per_block):
                b.skipped += n - ran
                b.ran += ran
        return list(out)
