"""Structured pruning that really removes channels (Torch-Pruning's DepGraph), and checks of
unstructured sparsity.

Channels are removed from the whole multi-exit model at once, so every coupled layer shrinks
together: residual additions, the stage that feeds the next stage, and the exit heads that
read a stage's output. The classifier outputs of the heads are never pruned. What was removed
is recorded as Torch-Pruning's pruning history (layer names and channel indices: plain JSON,
no pickles), which :func:`replay_pruning` applies to a fresh copy of the model.

Unstructured sparsity (zeros inside dense weight tensors, e.g. from ``torch.nn.utils.prune``)
is exported dense: no speedup is expected on targets without sparse kernels, which is said in
the record. :func:`sparsity_report` also checks the 2:4 pattern that Ampere/Orin sparse tensor
cores accelerate (the TX2 has none).
"""
import copy

from edgesdk.deps import require
from edgesdk.errors import InputError, ModelStructureError

IMPORTANCES = ("l1", "l2", "taylor")


def _tp():
    return require("torch_pruning", "prune", "prune channels (Torch-Pruning)")


def _importance(tp, name):
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    raise InputError("unknown importance '{}'; choose one of {}".format(name, ", ".join(IMPORTANCES)))


def _check_ratio(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InputError("{} must be a fraction of channels in [0, 1), got {!r}".format(what, value))
    return float(value)


def _classifiers(model, heads):
    """The last Linear/Conv of every head: their outputs are the classes and stay whole."""
    torch = require("torch", "torch", "prune models")
    out = []
    for k, head in enumerate(heads):
        layers = [m for m in head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        if not layers:
            raise ModelStructureError("exit head {} has no Linear or Conv2d layer to classify "
                                      "with".format(k))
        out.append(layers[-1])
    return out


def _multi_exit_loss(model, x, y):
    torch = require("torch", "torch", "prune models")
    outs = model(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return sum(torch.nn.functional.cross_entropy(o, y) for o in outs) / len(outs)


def prune_channels(model, example_input, ratio=0.5, stage_ratios=None, importance="l1",
                   stages_attr="stages", heads_attr="heads", data=None):
    """Remove channels from ``model`` in place; returns the pruning record (JSON-able dict).

    ``ratio``: fraction of channels removed in every stage; ``stage_ratios``: a list with one
    fraction per stage instead. ``importance``: ``l1`` / ``l2`` weight magnitude, or
    ``taylor`` (needs ``data=(x, y)``: gradients of the exits' mean loss on real samples).
    """
    from edgesdk.converters.model import split_model
    tp = _tp()
    torch = require("torch", "torch", "prune models")
    stages, heads = split_model(model, stages_attr, heads_attr)
    if stage_ratios is None:
        stage_ratios = [_check_ratio(ratio, "the pruning ratio")] * len(stages)
    else:
        stage_ratios = list(stage_ratios)
        if len(stage_ratios) != len(stages):
            raise InputError("{} stage ratios given for {} stages".format(len(stage_ratios), len(stages)))
        stage_ratios = [_check_ratio(r, "the ratio of stage {}".format(k))
                        for k, r in enumerate(stage_ratios)]
    imp = _importance(tp, importance)
    example = example_input[:2]
    before = tp.utils.count_ops_and_params(model, example[:1])[0]
    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=imp, pruning_ratio=0.0,
            pruning_ratio_dict={s: r for s, r in zip(stages, stage_ratios)},
            ignored_layers=_classifiers(model, heads))
        if importance == "taylor":
            if data is None:
                raise InputError("Taylor importance needs labelled data (x, y) for gradients")
            model.zero_grad()
            _multi_exit_loss(model, torch.as_tensor(data[0][:256]), torch.as_tensor(data[1][:256])).backward()
        pruner.step()
        model.zero_grad()
    except (InputError, ModelStructureError):
        raise
    except Exception as exc:  # Torch-Pruning raises plain errors on layers it cannot trace
        raise ModelStructureError("Torch-Pruning could not prune this model: {}: {}. Layers it "
                                  "cannot follow can be excluded by pruning fewer stages "
                                  "(a ratio of 0 for their stage).".format(type(exc).__name__, exc))
    finally:
        model.train(was_training)
    _check_still_runs(model, example)
    after = tp.utils.count_ops_and_params(model, example[:1])[0]
    history = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.pruning_history()]
    return {"kind": "structured", "tool": "torch-pruning", "tool_version": tp.__version__,
            "importance": importance, "stage_ratios": stage_ratios,
            "macs_before": int(before), "macs_after": int(after), "history": history}


def _check_still_runs(model, example):
    """The pruned model must still run: Torch-Pruning cannot see channel counts written into
    the code (a reshape to a fixed size, a hard-coded view)."""
    torch = require("torch", "torch", "prune models")
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:
        raise ModelStructureError(
            "after removing channels the model no longer runs: {}: {}. A layer probably uses a "
            "channel count written into its code (e.g. a reshape to a fixed size); compute it "
            "from the input's shape, or give that stage a ratio of 0".format(
                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))


def replay_pruning(model, example_input, record):
    """Apply a pruning record from :func:`prune_channels` to a fresh copy of the original
    model (same architecture and weights), in place."""
    tp = _tp()
    if not isinstance(record, dict) or record.get("kind") != "structured" or not isinstance(
            record.get("history"), list):
        raise InputError("not a structured pruning record (kind/history missing)")
    names = dict(model.named_modules())
    missing = sorted({h[0] for h in record["history"] if h[0] not in names})
    if missing:
        raise InputError("the pruning record names layers this model does not have: {}".format(
            ", ".join(missing[:10])))
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:2])
    try:
        dg.load_pruning_history([tuple(h) for h in record["history"]])
    except Exception as exc:
        raise InputError("the pruning record does not fit this model: {}: {}".format(
            type(exc).__name__, exc))
    return model


def fine_tune(model, x, y, epochs=1, lr=3e-4, batch_size=64, seed=0, log=None):
    """A short fine-tuning loop on real labelled data: Adam on the mean loss of all exits."""
    torch = require("torch", "torch", "fine-tune models")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y) or len(x) == 0:
        raise InputError("fine-tuning needs labelled data with one label per input")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = _multi_exit_loss(model, x[idx], y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log("fine-tune epoch {}/{}: mean exit loss {:.4f}".format(epoch + 1, epochs, total / len(x)))
    model.eval()
    return model


def exit_accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of every exit of a PyTorch multi-exit model on ``(x, y)``."""
    torch = require("torch", "torch", "evaluate models")
    was = model.training
    model.eval()
    correct = None
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs = model(torch.as_tensor(x[i:i + batch_size]))
            hits = [int((o.argmax(1) == torch.as_tensor(y[i:i + batch_size])).sum()) for o in outs]
            correct = hits if correct is None else [a + b for a, b in zip(correct, hits)]
    model.train(was)
    return [c / float(len(y)) for c in correct]


def sparsity_report(model):
    """Unstructured sparsity of every Conv/Linear weight and whether it has the 2:4 pattern
    (at most 2 non-zeros in every group of 4 along the input dimension)."""
    torch = require("torch", "torch", "inspect sparsity")
    layers, zeros, total, all_24 = [], 0, 0, True
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        w = m.weight.detach()
        # input dimension last, as sparse tensor cores group it
        flat = w.reshape(w.shape[0], -1) if w.dim() == 2 else w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
        nz = int((flat == 0).sum())
        ok = flat.shape[1] % 4 == 0 and bool(((flat.reshape(-1, 4) != 0).sum(1) <= 2).all())
        layers.append({"layer": name, "sparsity": nz / float(flat.numel()), "2:4": ok})
        zeros, total, all_24 = zeros + nz, total + flat.numel(), all_24 and ok
    return {"kind": "unstructured", "sparsity": zeros / float(max(total, 1)), "2:4": all_24,
            "layers": layers,
            "note": "exported dense: no speedup is expected on targets without sparse kernels "
                    "(the TX2 has none; 2:4 sparse tensor cores exist on Ampere/Orin)"}


def make_dense(model):
    """``model`` with ``torch.nn.utils.prune`` masks folded into plain weights (what ONNX
    export needs), as a copy: the caller's model keeps its masks. Returns ``(model,
    had_masks)``; a model without masks is returned as is."""
    torch = require("torch", "torch", "export pruned models")
    import torch.nn.utils.prune  # noqa: F401 (a submodule torch does not import itself)
    masked = [(m, n[:-len("_orig")]) for m in model.modules()
              for n, _ in m.named_parameters(recurse=False) if n.endswith("_orig")]
    if not masked:
        return model, False
    # The masked weight is a computed tensor that deepcopy refuses: copy without it (the
    # original gets it back at once; the copy's is folded in below).
    saved = [(m, n, getattr(m, n)) for m, n in masked]
    for m, n, _ in saved:
        delattr(m, n)
    try:
        dense = copy.deepcopy(model)
    finally:
        for m, n, t in saved:
            setattr(m, n, t)
    for m in dense.modules():
        for pname in [n[:-len("_orig")] for n, _ in m.named_parameters(recurse=False)
                      if n.endswith("_orig")]:
            torch.nn.utils.prune.remove(m, pname)
    return dense, True
