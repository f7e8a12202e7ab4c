"""Channel pruning that really removes channels, its replayable history, unstructured masks."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.utils.prune  # noqa: F401 (a submodule torch does not import itself)

from conftest import PREPROCESSING
from edgesdk.bundle import read_bundle
from edgesdk.cli import main
from edgesdk.converters import convert
from edgesdk.converters.pruning import (exit_accuracy, fine_tune, prune_channels, replay_pruning,
                                        sparsity_report)
from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle

KW = dict(stages_attr="blocks", heads_attr="exits", preprocessing=PREPROCESSING, progress=False)


@pytest.fixture(scope="module")
def data(mnist_split):
    _, (x, y) = mnist_split
    return torch.from_numpy(x), torch.from_numpy(y)


def test_pruning_removes_channels_across_stages_and_heads(trained_tiny, data):
    model = copy.deepcopy(trained_tiny)
    x, y = data
    before = [m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    rec = prune_channels(model, x[:4], ratio=0.5, stages_attr="blocks", heads_attr="exits")
    after = [m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(a < b for a, b in zip(after, before))          # every conv lost channels
    assert rec["macs_after"] < 0.5 * rec["macs_before"]
    outs = model(x[:5])
    assert [tuple(o.shape) for o in outs] == [(5, 10)] * 3    # heads still see 10 classes
    json.dumps(rec)                                           # plain JSON, no pickles
    assert rec["history"] and all(isinstance(h[0], str) for h in rec["history"])


def test_history_replays_to_the_same_model(trained_tiny, data):
    x, _ = data
    pruned = copy.deepcopy(trained_tiny)
    rec = json.loads(json.dumps(prune_channels(pruned, x[:4], stage_ratios=[0.25, 0.5, 0.0],
                                               importance="l2", stages_attr="blocks",
                                               heads_attr="exits")))
    fresh = copy.deepcopy(trained_tiny)
    replay_pruning(fresh, x[:4], rec)
    a, b = pruned.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="layers this model does not have"):
        replay_pruning(torch.nn.Sequential(torch.nn.Linear(2, 2)), x[:4], rec)


def test_fine_tuning_recovers_accuracy_and_the_bundle_records_it(trained_tiny, data, tmp_path):
    x, y = data
    model = copy.deepcopy(trained_tiny)
    base = exit_accuracy(model, x.numpy(), y.numpy())
    rec = prune_channels(model, x[:4], ratio=0.6, importance="taylor", data=(x, y),
                         stages_attr="blocks", heads_attr="exits")
    pruned = exit_accuracy(model, x.numpy(), y.numpy())
    fine_tune(model, x, y, epochs=3, lr=1e-3)  # 600 samples: bigger steps than the default
    tuned = exit_accuracy(model, x.numpy(), y.numpy())
    assert tuned[-1] > pruned[-1] and tuned[-1] >= base[-1] - 0.05
    out = tmp_path / "pruned.edgebundle"
    report = convert(model, x[:8].numpy(), str(out), pruning=[rec], **KW)
    assert max(report.max_abs_error) < 1e-4
    m = read_bundle(str(out)).manifest
    assert m["pruning"][0]["history"] == rec["history"]
    assert sum(report.stage_macs) < 0.6 * rec["macs_before"]
    acc = float((load_bundle(str(out)).run(x.numpy(), early_exit=False).labels == y.numpy()).mean())
    assert acc == pytest.approx(tuned[-1], abs=0.01)


def test_ratio_errors(trained_tiny, data):
    x, _ = data
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(InputError, match="fraction of channels"):
            prune_channels(copy.deepcopy(trained_tiny), x[:4], ratio=bad, stages_attr="blocks",
                           heads_attr="exits")
    with pytest.raises(InputError, match="2 stage ratios given for 3 stages"):
        prune_channels(copy.deepcopy(trained_tiny), x[:4], stage_ratios=[0.1, 0.2],
                       stages_attr="blocks", heads_attr="exits")
    with pytest.raises(InputError, match="Taylor importance needs labelled data"):
        prune_channels(copy.deepcopy(trained_tiny), x[:4], importance="taylor",
                       stages_attr="blocks", heads_attr="exits")


def test_unstructured_masks_export_dense_and_say_so(trained_tiny, data, tmp_path):
    x, _ = data
    model = copy.deepcopy(trained_tiny)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.5)
    out = tmp_path / "sparse.edgebundle"
    convert(model, x[:8].numpy(), str(out), **KW)
    assert hasattr(model.blocks[0][0], "weight_mask")     # the caller's model keeps its masks
    rec = read_bundle(str(out)).manifest["pruning"][0]
    assert rec["kind"] == "unstructured" and 0.45 <= rec["sparsity"] <= 0.55
    assert rec["2:4"] is False and "no speedup" in rec["note"]
    # A weight with exactly 2 of every 4 inputs zeroed qualifies for sparse tensor cores.
    lin = torch.nn.Linear(8, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4]] * 2))
    assert sparsity_report(torch.nn.Sequential(lin))["2:4"] is True


def test_cli_prune_fine_tune_and_inspect(trained_tiny, mnist_split, tmp_path, capsys):
    import os
    _, (x, y) = mnist_split
    w = tmp_path / "w.pt"
    torch.save(trained_tiny.state_dict(), str(w))
    cal = tmp_path / "cal.npz"
    np.savez(str(cal), x=x, y=y)
    model = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models.py")
    out = tmp_path / "p.edgebundle"
    code = main(["convert", "--model", model + ":TinyNet", "--weights", str(w), "--stages-attr",
                 "blocks", "--heads-attr", "exits", "--example-data", str(cal), "--prune", "0.5",
                 "--fine-tune-epochs", "1", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "before pruning" in text and "fine-tuned" in text
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "50%" in text and "pruned channels (torch-pruning" in text and "fine-tuned 1 epochs" in text
    code = main(["convert", "--model", model + ":TinyNet", "--weights", str(w), "--stages-attr",
                 "blocks", "--heads-attr", "exits", "--example-data", str(cal), "--prune", "1.5",
                 "-o", str(tmp_path / "bad.edgebundle")])
    assert code == 4 and not (tmp_path / "bad.edgebundle").exists()


def test_a_channel_count_in_the_code_is_reported(data):
    from torch import nn
    from edgesdk.converters import MultiExitModel
    from edgesdk.errors import ModelStructureError

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(x.reshape(-1, 8 * 28 * 28))      # 8 channels written into the code

    model = MultiExitModel([nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())], [Fixed()])
    x, _ = data
    with pytest.raises(ModelStructureError, match="no longer runs.*reshape to a fixed size"):
        prune_channels(model, x[:4], ratio=0.5)
