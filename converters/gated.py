"""Residual blocks with a learned per-sample gate inside a stage (LAUDNet/SkipNet-style layer
skipping), and their export as the pieces the runtime skips between.

:func:`GatedBlock` is ``post(shortcut(x) + keep * branch(x))`` where ``keep`` is 1 for a
sample when ``sigmoid(gate(x)) < threshold`` (the gate gives a *skip* logit). The shortcut
may be a projection (a strided 1x1 convolution), so downsampling blocks can be gated too:
a skipped sample keeps ``post(shortcut(x))``. A stage is an ``nn.Sequential`` whose direct
children may be gated blocks; the blocks need no exit head of their own.

The converter writes the stage's dense graph (every branch computed: what the other backends,
the reference outputs and ``gates off`` run) and, per gated block, two ONNX graphs:

- a *segment*: everything since the previous gated block (its ``post`` first, then the plain
  children), then the block's gate and shortcut: outputs ``h``, the skip logit, and the
  shortcut's output (none for an identity shortcut);
- the *branch*: ``(h, shortcut) -> shortcut + branch(h)``, run only on the samples whose gate
  keeps the block;

and a *tail* for what follows the last gated block. The gate is computed inside the segment
graph: no separate call. See :mod:`edgesdk.runtime.gated_stages` for how they run.
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


def _pieces(children):
    """``[(segment, branch)]`` modules per gated block, and the tail (None when nothing
    follows the last gated block)."""
    nn = _torch().nn

    class Segment(nn.Module):
        def __init__(self, before, plain, block):
            super().__init__()
            self.before = before if before is not None else nn.Identity()
            self.plain = nn.Sequential(*plain)
            self.block = block

        def forward(self, x):
            h = self.plain(self.before(x))
            out = (h, self.block.gate(h))
            return out if self.block.identity_shortcut else out + (self.block.shortcut(h),)

    class Branch(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, h, *short):
            return (short[0] if short else h) + self.block.branch(h)

    class Tail(nn.Module):
        def __init__(self, before, plain):
            super().__init__()
            self.before, self.plain = before, nn.Sequential(*plain)

        def forward(self, z):
            return self.plain(self.before(z))

    pieces, before, plain = [], None, []
    for child in children:
        if getattr(child, "edgesdk_gated", False):
            pieces.append((Segment(before, plain, child).eval(), Branch(child).eval()))
            before, plain = child.post, []
        else:
            plain.append(child)
    post_is_identity = isinstance(before, nn.Identity)
    tail = None if post_is_identity and not plain else Tail(before, plain).eval()
    return pieces, tail


def export_gated(draft, stage, args, inputs, outputs, gid, macs_of):
    """The segment, branch and tail graphs of a stage with gated blocks (example input
    ``args``, tensor names ``inputs``/``outputs`` of the stage graph) written into the draft,
    each checked against PyTorch in ONNX Runtime; ``macs_of(path, feeds)`` counts a written
    graph's MACs per sample. Returns the stage's ``gated`` record and the files written."""
    torch = _torch()
    from edgesdk.converters.adaptive_stages import _export_checked
    if len(args) != 1:
        raise ModelStructureError("a stage with gated blocks takes one tensor, stage {} gets {}"
                                  .format(gid, len(args)))
    children, _ = stage_children(stage)
    pieces, tail = _pieces(children)
    os.makedirs(draft.path("stages"), exist_ok=True)
    state, names = [args[0].numpy()], list(inputs)
    blocks, files = [], []

    def export(module, state, ins, outs, rel, what):
        _export_checked(module, state, ins, outs, draft.path(rel), what)
        files.append(rel)
        with torch.no_grad():
            got = module(*[torch.from_numpy(s) for s in state])
        return [g.numpy() for g in (got if isinstance(got, tuple) else (got,))]

    for i, (segment, branch) in enumerate(pieces):
        block = segment.block
        seg_out = ["h{}".format(i), "skip_logit{}".format(i)]
        seg_out += [] if block.identity_shortcut else ["shortcut{}".format(i)]
        seg_rel = "stages/{}.gate{}.onnx".format(gid, i)
        got = export(segment, state, names, seg_out, seg_rel,
                     "the segment before gated block {} of {}".format(i, gid))
        if list(got[1].shape[1:]) != [1]:
            raise ModelStructureError("the gate of block {} of {} returns {}, expected (N, 1) "
                                      "skip logits".format(i, gid, list(got[1].shape)))
        br_in = [seg_out[0]] + seg_out[2:]
        br_feed = [got[0]] + got[2:]
        br_rel = "stages/{}.branch{}.onnx".format(gid, i)
        z = "z{}".format(i) if i + 1 < len(pieces) or tail is not None else outputs[0]
        state = export(branch, br_feed, br_in, [z], br_rel,
                       "the branch of gated block {} of {}".format(i, gid))
        blocks.append({"segment": {"file": seg_rel, "inputs": names, "outputs": seg_out},
                       "branch": {"file": br_rel, "inputs": br_in, "outputs": [z]},
                       "threshold": float(block.threshold),
                       "macs": int(macs_of(br_rel, dict(zip(br_in, br_feed)))),
                       "chosen_from": {"method": "the model's GatedBlock threshold "
                                                 "(uncalibrated)"}})
        names = [z]
    record = {"blocks": blocks, "tail": None}
    if tail is not None:
        rel = "stages/{}.tail.onnx".format(gid)
        export(tail, state, names, list(outputs), rel, "the tail after the gated blocks of " + gid)
        record["tail"] = {"file": rel, "inputs": names, "outputs": list(outputs)}
    return record, files

