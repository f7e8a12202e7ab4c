"""Residual blocks with a learned per-sample gate inside a stage (LAUDNet/SkipNet-style layer
skipping), and their export as the pieces the runtime skips between.

:func:`GatedBlock` is ``post(shortcut(x) + keep * branch(x))`` where ``keep`` is 1 for a
sample when ``sigmoid(gate(x)) < threshold`` (the gate gives a *skip* logit). The shortcut
may be a projection (a strided 1x1 convolution), so downsampling blocks can be gated too:
a skipped sample keeps ``post(shortcut(x))``. A stage is an ``nn.Sequential`` whose direct
children may be gated blocks; the blocks need no exit head of their own.

The converter writes the stage's dense graph (every branch computed: what the other backends,
the reference outputs and "gates off" run) and the graphs the runtime chains instead:

- the *entry*: the children before the first gated block, then that block's gate and
  shortcut: outputs ``h``, the skip logit per sample, and the shortcut's output (none for an
  identity shortcut);
- per block, *run*: ``(h, shortcut) -> shortcut + branch(h)``, then what follows the block
  (its ``post``, the plain children after it, the next block's gate and shortcut, or the
  stage's end), for the samples that compute the block;
- and *skip*: the same continuation from the shortcut's output alone, for the samples that
  skip it (none when nothing follows the last block).

The gate is an output of the graph before its block, and a sample computing or skipping a
block costs one graph call either way: at batch 1 a stage with B gated blocks makes B + 1
calls. See :mod:`edgesdk.runtime.gated_stages` for how they run.
"""
import os

from edgesdk.deps import require
from edgesdk.errors import ModelStructureError


def _torch():
    return require("torch", "torch", "build gated blocks")


def GatedBlock(branch, gate, shortcut=None, post=None, threshold=0.5):  # noqa: N802 - a class
    """A residual block a sample skips when ``sigmoid(gate(x)) >= threshold``: ``branch`` and
    ``shortcut`` (None: identity) map the block's input to its output shape, ``gate`` gives
    ``(N, 1)`` skip logits, ``post`` (e.g. ``nn.ReLU()``) runs after the sum. In training the
    keep decision is hard with a straight-through sigmoid gradient, and ``keep_fraction``
    holds the soft share of samples kept (for a compute loss). ``gating = False`` computes
    every branch (the ungated network). Returns an ``nn.Module``."""
    torch = _torch()
    nn = torch.nn
    if not 0.0 <= float(threshold) <= 1.0:
        raise ModelStructureError("a gate threshold is a skip probability in [0, 1], got {}"
                                  .format(threshold))

    class Gated(nn.Module):
        edgesdk_gated = True

        def __init__(self):
            super().__init__()
            self.branch, self.gate = branch, gate
            self.shortcut = shortcut if shortcut is not None else nn.Identity()
            self.post = post if post is not None else nn.Identity()
            self.identity_shortcut = shortcut is None
            self.threshold, self.gating, self.keep_fraction = float(threshold), True, None

        def keep(self, x):
            """(N, 1) floats: 1 where the sample computes the branch."""
            skip = torch.sigmoid(self.gate(x))
            hard = (skip < self.threshold).to(x.dtype)
            if self.training:   # straight-through: the hard decision, the sigmoid's gradient
                soft = 1.0 - skip
                self.keep_fraction = soft.mean()
                return hard + soft - soft.detach()
            return hard

        def forward(self, x):
            y = self.branch(x)
            if self.gating:
                y = self.keep(x).view([-1] + [1] * (y.dim() - 1)) * y
            return self.post(self.shortcut(x) + y)
    return Gated()


def gated_blocks(module):
    """The gated blocks anywhere in ``module``."""
    return [m for m in module.modules() if getattr(m, "edgesdk_gated", False)]


class dense_gates(object):  # noqa: N801 - used as a context manager
    """Within the block, every gated block of ``model`` computes its branch (the ungated
    network the stage graphs and reference outputs are of); restored on exit."""

    def __init__(self, model):
        self.blocks = gated_blocks(model)

    def __enter__(self):
        self.saved = [b.gating for b in self.blocks]
        for b in self.blocks:
            b.gating = False
        return self

    def __exit__(self, *exc):
        for b, g in zip(self.blocks, self.saved):
            b.gating = g


def stage_children(stage):
    """The direct children of a stage holding gated blocks; :class:`ModelStructureError` when
    a gated block sits deeper (the runtime can skip only between a stage's children)."""
    nn = _torch().nn
    children = list(stage) if isinstance(stage, nn.Sequential) else [stage]
    top = [c for c in children if getattr(c, "edgesdk_gated", False)]
    nested = [m for c in children for m in gated_blocks(c) if m is not c]
    if nested:
        raise ModelStructureError(
            "stage {} has a gated block inside {}: gated blocks must be direct children of "
            "the stage's nn.Sequential (or the stage itself)".format(
                type(stage).__name__, next(type(c).__name__ for c in children
                                           if any(m is not c for m in gated_blocks(c)))))
    return children, top


def _pieces(children, ungated=()):
    """The modules a gated stage runs as: the entry (the children before the first gated
    block, then its gate and shortcut) and, per block, ``(index, block, run, skip)``:
    ``run(h[, shortcut])`` adds the branch and goes on to what follows the block (the next
    block's gate and shortcut, or the stage's end), ``skip(shortcut)`` goes on from the
    shortcut alone (None when nothing follows the last block). ``index`` counts the stage's
    gated blocks; those in ``ungated`` lose their gate and run as plain children, every
    branch computed, inside the graph before them."""
    nn = _torch().nn

    class Dense(nn.Module):   # a gated block whose gate was dropped: always computes its branch
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            b = self.block
            return b.post(b.shortcut(x) + b.branch(x))

    class Segment(nn.Module):   # post of the previous block, plain children, then a gate
        def __init__(self, before, plain, block):
            super().__init__()
            self.before = before if before is not None else nn.Identity()
            self.plain = nn.Sequential(*plain)
            self.block = block

        def forward(self, x):
            h = self.before(x)
            h = self.plain(h) if len(self.plain) else h
            if self.block is None:   # the stage's end
                return h
            out = (h, self.block.gate(h))
            return out if self.block.identity_shortcut else out + (self.block.shortcut(h),)

    class Run(nn.Module):
        def __init__(self, block, following):
            super().__init__()
            self.block, self.following = block, following

        def forward(self, h, *short):
            return self.following((short[0] if short else h) + self.block.branch(h))

    index = {}   # child position -> its index among the stage's gated blocks
    for i, c in enumerate(children):
        if getattr(c, "edgesdk_gated", False):
            index[i] = len(index)
    ungated = set(ungated)
    if ungated - set(index.values()) or len(ungated) == len(index):
        raise ModelStructureError("gates {} cannot be dropped from a stage with {} gated blocks "
                                  "(at least one gate stays)".format(sorted(ungated), len(index)))
    children = [Dense(c) if index.get(i) in ungated else c for i, c in enumerate(children)]
    gated = [i for i in sorted(index) if index[i] not in ungated]
    entry = Segment(None, children[:gated[0]], children[gated[0]]).eval()
    blocks = []
    for j, i in enumerate(gated):
        block = children[i]
        end = gated[j + 1] if j + 1 < len(gated) else len(children)
        following = Segment(block.post, children[i + 1:end],
                            children[end] if end < len(children) else None).eval()
        last_is_identity = end == len(children) and i + 1 == end and \
            isinstance(block.post, nn.Identity)
        blocks.append((index[i], block, Run(block, following).eval(),
                       None if last_is_identity else following))
    return entry, blocks


def export_gated(draft, stage, args, inputs, outputs, gid, macs_of, ungated=()):
    """The graphs of a stage with gated blocks (example input ``args``, tensor names
    ``inputs``/``outputs`` of the stage graph) written into the draft, each checked against
    PyTorch in ONNX Runtime; ``macs_of(path, feeds)`` counts a written graph's MACs per
    sample. The gated blocks numbered in ``ungated`` (their index among the stage's gated
    blocks) keep no gate: they run inside the graph before them, every sample computing them.
    Returns the stage's ``gated`` record and the files written."""
    torch = _torch()
    from edgesdk.converters.adaptive_stages import _export_checked
    if len(args) != 1:
        raise ModelStructureError("a stage with gated blocks takes one tensor, stage {} gets {}"
                                  .format(gid, len(args)))
    children, _ = stage_children(stage)
    entry, pieces = _pieces(children, ungated)
    os.makedirs(draft.path("stages"), exist_ok=True)
    files = []

    def export(module, state, ins, outs, rel, what):
        _export_checked(module, state, ins, outs, draft.path(rel), what)
        files.append(rel)
        with torch.no_grad():
            got = module(*[torch.from_numpy(s) for s in state])
        return [g.numpy() for g in (got if isinstance(got, tuple) else (got,))]

    def gate_outputs(i, block):
        names = ["h{}".format(i), "skip_logit{}".format(i)]
        return names + ([] if block.identity_shortcut else ["shortcut{}".format(i)])

    names = gate_outputs(0, pieces[0][1])
    rel = "stages/{}.entry.onnx".format(gid)
    got = export(entry, [args[0].numpy()], list(inputs), names, rel,
                 "the part of {} before its first gated block".format(gid))
    record = {"entry": {"file": rel, "inputs": list(inputs), "outputs": names}, "blocks": []}
    for i, (index, block, run, skip) in enumerate(pieces):
        if list(got[1].shape[1:]) != [1]:
            raise ModelStructureError("the gate of block {} of {} returns {}, expected (N, 1) "
                                      "skip logits".format(i, gid, list(got[1].shape)))
        last = i + 1 == len(pieces)
        outs = list(outputs) if last else gate_outputs(i + 1, pieces[i + 1][1])
        run_in, run_feed = [names[0]] + names[2:], [got[0]] + got[2:]
        rel = "stages/{}.run{}.onnx".format(gid, i)
        after_run = export(run, run_feed, run_in, outs, rel,
                           "gated block {} of {}, computed".format(i, gid))
        spec = {"block": index, "run": {"file": rel, "inputs": run_in, "outputs": outs},
                "skip": None,
                "threshold": float(block.threshold), "shortcut": not block.identity_shortcut,
                "chosen_from": {"method": "the model's GatedBlock threshold (uncalibrated)"}}
        macs = macs_of(rel, dict(zip(run_in, run_feed)))
        if skip is not None:   # from the shortcut's output (the block's input if identity)
            short, short_name = (got[2], names[2]) if len(names) == 3 else (got[0], names[0])
            rel = "stages/{}.skip{}.onnx".format(gid, i)
            export(skip, [short], [short_name], outs, rel,
                   "gated block {} of {}, skipped".format(i, gid))
            spec["skip"] = {"file": rel, "inputs": [short_name], "outputs": outs}
            macs -= macs_of(rel, {short_name: short})
        spec["macs"] = int(max(macs, 0))   # what skipping the block saves per sample
        record["blocks"].append(spec)
        names, got = outs, after_run
    return record, files
