"""The multi-exit model as the converter sees it: ordered stages and one exit head per stage.

Calling convention: the state carried between stages is one tensor or a tuple of tensors;
stage k and head k are called with the state *unpacked* as positional arguments
(``stage(*state)``), stage k returns the next state, head k returns logits ``(N, classes)``.
A stage or head marked with :func:`takes_previous_logits` (boosted heads, two-branch models)
also gets the previous exit's logits, as one more positional argument after the state.
"""
from dataclasses import dataclass

from edgesdk.deps import require
from edgesdk.errors import ModelStructureError


def _torch():
    return require("torch", "torch", "convert PyTorch models")


def _module_list(model, attr):
    nn = _torch().nn
    if not hasattr(model, attr):
        raise ModelStructureError("{} has no attribute '{}'; name the nn.ModuleList that holds the "
                                  "{} (stages_attr= / heads_attr=, --stages-attr / --heads-attr)"
                                  .format(type(model).__name__, attr, attr))
    value = getattr(model, attr)
    if not isinstance(value, nn.ModuleList):
        raise ModelStructureError("{}.{} is a {}, expected an nn.ModuleList".format(
            type(model).__name__, attr, type(value).__name__))
    return value


def MultiExitModel(stages, heads):  # noqa: N802 - reads as a class to users
    """Build a multi-exit model from ordered stages and exit heads (one head per stage).

    Returns an ``nn.Module`` whose ``forward`` returns the list of exit logits.
    """
    torch = _torch()
    nn = torch.nn

    class MultiExit(nn.Module):
        edgesdk_multi_exit = True  # forward is chain() by construction; no need to re-check it

        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList(stages)
            self.heads = nn.ModuleList(heads)

        def forward(self, x):
            return chain(self.stages, self.heads, (x,))

    if len(stages) == 0 or len(stages) != len(heads):
        raise ModelStructureError("a multi-exit model needs one exit head per stage; got {} stages "
                                  "and {} heads".format(len(stages), len(heads)))
    return MultiExit()


def takes_previous_logits(module):
    """Mark a stage or exit head (not the first) to be called with the previous exit's logits
    as one more positional argument after the state; returns ``module``.

    The bundle then computes the previous head inside the previous stage's graph and carries
    its logits as one more state tensor (:func:`fold_previous_logits`): nothing is computed
    twice, and the runtime runs the graphs as any others."""
    module.edgesdk_previous_logits = True
    return module


def _takes_logits(module):
    return bool(getattr(module, "edgesdk_previous_logits", False))


def _call(module, state, previous):
    return module(*(tuple(state) + tuple(previous))) if _takes_logits(module) else module(*state)


def chain(stages, heads, state):
    """Run stages and heads the way the runtime will; returns the list of exit logits."""
    logits = []
    for stage, head in zip(stages, heads):
        state = as_state(_call(stage, state, logits[-1:]))
        logits.append(_call(head, state, logits[-1:]))
    return logits


def fold_previous_logits(stages, heads):
    """The stages and heads as the bundle's graphs are cut when some take the previous exit's
    logits (:func:`takes_previous_logits`); the modules themselves where none does.

    Where stage or head k reads exit k-1's logits, stage k-1's graph computes head k-1 too and
    returns its logits as its last state tensor, and head k-1's graph only passes them on. Where
    only head k reads them, stage k's graph passes them through beside its own state."""
    n = len(stages)
    wants = [_takes_logits(stages[k]) or _takes_logits(heads[k]) for k in range(n)]
    if not any(wants):
        return list(stages), list(heads)
    if wants[0]:
        raise ModelStructureError("stage 0 and exit head 0 have no previous exit whose logits "
                                  "they could take (takes_previous_logits)")
    nn = _torch().nn
    feeds = [k + 1 < n and wants[k + 1] for k in range(n)]   # head k's logits go on to k+1

    class FoldedStage(nn.Module):
        edgesdk_folded = True

        def __init__(self, k):
            super().__init__()
            self.stage, self.head, self.k = stages[k], heads[k], k

        def forward(self, *inputs):
            k = self.k
            state, previous = (inputs[:-1], inputs[-1:]) if wants[k] else (inputs, ())
            out = as_state(_call(self.stage, state, previous))
            if feeds[k]:
                return out + (_call(self.head, out, previous),)
            return out + (previous if _takes_logits(self.head) else ())

    class FoldedHead(nn.Module):
        edgesdk_folded = True

        def __init__(self, k):
            super().__init__()
            self.head, self.k = heads[k], k
            self.picks = feeds[k]    # only hands on logits the stage's graph computed

        def forward(self, *state):
            if self.picks:
                return state[-1]     # computed in the stage's graph
            return self.head(*state)
    return [FoldedStage(k) for k in range(n)], [FoldedHead(k) for k in range(n)]


def as_state(value):
    """A stage output as a tuple of tensors."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@dataclass
class Structure:
    """What tracing one sample batch through the stages found."""

    state_shapes: list      # per stage: shapes of its output tensors
    num_classes: int
    logits: list            # per exit: reference logits (torch tensors)


def split_model(model, stages_attr="stages", heads_attr="heads"):
    """The (stages, heads) ModuleLists of ``model``, checked for length."""
    stages = _module_list(model, stages_attr)
    heads = _module_list(model, heads_attr)
    if len(stages) == 0 or len(stages) != len(heads):
        raise ModelStructureError("{}: expected one exit head per stage, found {} stages in '{}' and "
                                  "{} heads in '{}'".format(type(model).__name__, len(stages),
                                                            stages_attr, len(heads), heads_attr))
    return stages, heads


def _describe(state):
    return ", ".join(str(list(t.shape)) if hasattr(t, "shape") else type(t).__name__ for t in state)


def trace_structure(model, stages, heads, example):
    """Run ``example`` through stages and heads and check everything the runtime relies on.

    Checks: each stage output is a tensor or tuple of tensors that the next stage accepts,
    every state tensor keeps the batch dimension first (the runtime drops exited samples
    along it), heads return ``(N, classes)`` with the same class count, and ``model.forward``
    (when it is not our own wrapper) returns exactly these exit logits.
    """
    torch = _torch()
    batch = example.shape[0]
    state, shapes, logits = (example,), [], []
    with torch.no_grad():
        for k, (stage, head) in enumerate(zip(stages, heads)):
            try:
                out = stage(*state)
            except Exception as exc:
                where = "the model input" if k == 0 else "stage {}'s output ({})".format(
                    k - 1, _describe(state))
                raise ModelStructureError(
                    "stage {} ({}) cannot take {}: {}: {}. Stage k+1 is called with stage k's "
                    "outputs unpacked as positional arguments.".format(
                        k, type(stage).__name__, where, type(exc).__name__, exc))
            state = as_state(out)
            for i, t in enumerate(state):
                if not isinstance(t, torch.Tensor):
                    raise ModelStructureError("stage {} output {} is a {}, expected a tensor".format(
                        k, i, type(t).__name__))
                if t.dim() == 0 or t.shape[0] != batch:
                    raise ModelStructureError(
                        "stage {} output {} has shape {}; every state tensor must keep the batch "
                        "dimension ({}) first, so exited samples can leave the batch".format(
                            k, i, list(t.shape), batch))
            shapes.append([list(t.shape) for t in state])
            try:
                y = head(*state)
            except Exception as exc:
                raise ModelStructureError("exit head {} ({}) cannot take stage {}'s output ({}): {}: {}"
                                          .format(k, type(head).__name__, k, _describe(state),
                                                  type(exc).__name__, exc))
            if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != batch:
                raise ModelStructureError("exit head {} must return logits of shape (N, classes), got "
                                          "{}".format(k, _describe(as_state(y))))
            if logits and y.shape[1] != logits[0].shape[1]:
                raise ModelStructureError("exit head {} has {} classes, exit head 0 has {}".format(
                    k, y.shape[1], logits[0].shape[1]))
            logits.append(y)
        _check_forward(model, example, logits, torch)
    if logits[0].shape[1] < 2:
        raise ModelStructureError("exit heads must have at least 2 classes")
    return Structure(shapes, int(logits[0].shape[1]), logits)


def _check_forward(model, example, logits, torch):
    """The user's forward must return the same exit logits as chaining stages and heads."""
    if model is None or getattr(model, "edgesdk_multi_exit", False):
        return
    try:
        out = model(example)
    except Exception as exc:
        raise ModelStructureError("{}.forward failed on the example input: {}: {}".format(
            type(model).__name__, type(exc).__name__, exc))
    if not isinstance(out, (list, tuple)) or len(out) != len(logits):
        raise ModelStructureError("{}.forward must return the list of {} exit logits, got {}".format(
            type(model).__name__, len(logits), type(out).__name__))
    for k, (a, b) in enumerate(zip(out, logits)):
        if not isinstance(a, torch.Tensor) or a.shape != b.shape or not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
            raise ModelStructureError(
                "{}.forward's exit {} differs from running stage 0..{} then head {} (the stages' "
                "outputs do not feed the next stage as forward does). edgesdk exports each "
                "stage separately, so forward must only chain stages and heads.".format(
                    type(model).__name__, k, k, k))
