"""Per-input layer skipping and channel skipping inside a stage.

- **Gate** (layer skipping): a small graph reads the stage's input state and gives one logit
  per sample; a sample whose ``sigmoid(logit) >= threshold`` skips the stage, its state passing
  unchanged (the stage is a residual block, whose output has its input's shape). The stage
  graph runs on the other samples only, so skipping saves its time on every backend.
- **Width variants** (channel skipping): narrower graphs of the same stage (slimmable or
  pruned hidden widths, same input and output). A router picks one per sample; variant 0 is
  the stage itself (full width). A named router (a pure-numpy policy) reads the previous
  exit's probabilities; a learned router is an ONNX graph (a trained masker) that reads the
  stage's input state and scores each variant, and optionally skipping the stage.

Gates and variants are ONNX graphs run with ONNX Runtime on the host CPU, whichever executor
runs the stage. Python 3.6 / numpy 1.19 compatible.
"""
import threading

import numpy as np

from edgesdk.errors import BundleError, InputError
from edgesdk.registry import Registry
from edgesdk.runtime.policies import softmax


class ConfidenceRouter(object):
    """Narrower variants for more confident samples: with ascending ``bounds`` b1 < b2 < ...,
    a sample whose previous exit's top probability is below b1 runs variant 0 (full width),
    in [b1, b2) variant 1, and so on; one bound per narrower variant."""

    name = "confidence"

    def __init__(self, bounds):
        bounds = [float(b) for b in bounds]
        if not bounds or any(not 0.0 <= b <= 1.0 for b in bounds) or bounds != sorted(bounds):
            raise InputError("confidence router bounds must be ascending numbers in [0, 1], "
                             "got {}".format(bounds))
        self.bounds = np.asarray(bounds)
        self.choices = len(bounds) + 1

    def route(self, probs):
        """Variant index per sample."""
        return np.searchsorted(self.bounds, probs.max(axis=1), side="right")


ROUTERS = Registry("router", {"confidence": "edgesdk.runtime.adaptive_stages:ConfidenceRouter"})
GRAPH_ROUTER = "graph"   # the manifest's name for a learned router


class GraphRouter(object):
    """A learned router: an ONNX graph on the stage's input state giving one score per
    choice, the widest variant first; with ``skip``, a last score for skipping the stage.
    Each sample takes its highest score."""

    reads_state = True

    def __init__(self, graph, variants, skip):
        self.graph, self.skip = graph, bool(skip)
        self.choices = variants + (1 if skip else 0)

    def route(self, state):
        scores = np.asarray(self.graph.run(state)[0])
        if scores.ndim != 2 or scores.shape[1] != self.choices:
            raise BundleError("the router graph gave scores of shape {}, expected [N, {}]".format(
                list(scores.shape), self.choices))
        return scores.argmax(axis=1)


def make_router(spec, variants, where, graph=None):
    """The router a manifest entry names, checked against the number of variants
    (``graph``: the loaded graph of a learned router)."""
    if spec["name"] == GRAPH_ROUTER:
        return GraphRouter(graph, variants, spec.get("skip", False))
    router = ROUTERS.get(spec["name"])(spec["bounds"])
    if router.choices != variants:
        raise BundleError("{}: router '{}' chooses among {} variants but the stage has {}: it "
                          "would select a variant the bundle lacks".format(
                              where, spec["name"], router.choices, variants))
    return router


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


class AdaptiveStage(object):
    """A stage graph with its gate and/or width variants; runs like a stage graph.

    ``run(state, hint)``: ``hint`` is the previous exit's probabilities for the rows of
    ``state``, which the engine passes when it has them (else the router's head runs here).
    ``enabled`` False runs the full stage for every sample (to compare). ``skipped``, ``ran``
    and ``routed`` count samples (under a lock: several threads may run one model).
    """

    def __init__(self, sid, stage, gate=None, threshold=0.5, variants=(), router=None,
                 prev_head=None):
        self.id, self.stage, self.gate, self.threshold = sid, stage, gate, threshold
        self.narrower = list(variants)
        self.router, self.prev_head = router, prev_head
        self.enabled = True
        self.skipped, self.ran = 0, 0
        self.routed = np.zeros(len(self.narrower) + 1, dtype=np.int64)
        self._count_lock = threading.Lock()

    adaptive = True   # EdgeModel.adaptive_stages() lists it

    def reset_counts(self):
        with self._count_lock:
            self.skipped = self.ran = 0
            self.routed[:] = 0

    def skip_counts(self):
        """``{stage id: samples that skipped it}`` since the last reset."""
        return {self.id: self.skipped}

    def macs_skipped(self, stage_macs):
        """MACs not computed by skipping, summed over samples (``stage_macs`` per sample)."""
        return self.skipped * stage_macs

    def _count(self, skipped=0, ran=0, variant=None, rows=0):
        with self._count_lock:
            self.skipped += skipped
            self.ran += ran
            if variant is not None:
                self.routed[variant] += rows

    def run(self, state, hint=None):
        n = len(state[0])
        if not self.enabled or n == 0:
            return self.stage.run(state)
        run = np.ones(n, dtype=bool)
        if self.gate is not None:
            run = _sigmoid(np.asarray(self.gate.run(state)[0]).reshape(n)) < self.threshold
            self._count(skipped=int(n - run.sum()))
        if not run.any():
            return list(state)
        if self.router is None and run.all():  # nothing skipped: no copies
            self._count(ran=n, variant=0, rows=n)
            return self.stage.run(state)
        choice = np.zeros(n, dtype=np.int64)
        if self.router is not None:
            if getattr(self.router, "reads_state", False):
                choice = np.asarray(self.router.route(state))
            else:
                probs = hint if hint is not None and len(hint) == n else \
                    softmax(self.prev_head.run(state)[0])
                choice = np.asarray(self.router.route(probs))
            skips = getattr(self.router, "skip", False)
            if choice.min() < 0 or choice.max() > len(self.narrower) + skips:
                raise BundleError("router of stage '{}' chose variant {} but the stage has "
                                  "variants 0..{}".format(self.id, int(choice.max()),
                                                          len(self.narrower)))
            if skips:   # the last choice skips the stage
                skip = run & (choice == len(self.narrower) + 1)
                run &= ~skip
                self._count(skipped=int(skip.sum()))
                if not run.any():
                    return list(state)
        out = None
        for v in np.unique(choice[run]):
            rows = run & (choice == v)
            graph = self.stage if v == 0 else self.narrower[v - 1]
            part = graph.run([s[rows] for s in state])
            self._count(variant=v, rows=int(rows.sum()))
            if rows.all():
                self._count(ran=n)
                return part
            if out is None:
                out = [np.empty((n,) + np.shape(p)[1:], dtype=np.asarray(p).dtype) for p in part]
                if not run.all():   # skipped rows keep their state (a gated stage keeps shapes)
                    for o, s in zip(out, state):
                        o[~run] = s[~run]
            for o, p in zip(out, part):
                o[rows] = p
        self._count(ran=int(run.sum()))
        return out
