"""Export failures of research code say where they happened, keep the exporter's dumps out of
the terminal, and weights that do not fit are summarized."""
import os

import pytest
import torch
from torch import nn

from conftest import cli
from edgesdk.converters.onnx_export import export_graph
from edgesdk.errors import ConversionError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(HERE, "models.py") + ":TinyNet"


class Spectral(nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x).abs()   # no ONNX export at opset 13


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x):
        return self.pool(x)


def _export_error(module, capfd):
    with pytest.raises(ConversionError) as e:
        export_graph(nn.Sequential(nn.Identity(), module), [torch.zeros(1, 2, 14, 14)],
                     ["x"], ["y"], 13, "stage 0")
    printed = capfd.readouterr()
    return str(e.value), e.value.detail, printed.out + printed.err


def test_an_unsupported_operator_names_the_module_and_source_line(capfd):
    message, detail, printed = _export_error(Spectral(), capfd)
    assert "in module '1' (Spectral) at {}:".format(os.path.abspath(__file__)) in message
    assert "return torch.fft.fft2(x).abs()" in message and "'aten::fft_fft2'" in message
    assert len(message.splitlines()) == 1
    # The exporter's IR dump went into the error's detail (--verbose), not to the terminal.
    assert printed == "" and "Torch IR graph at exception" in detail


def test_adaptive_pooling_that_cannot_export_names_the_sizes_that_would(capfd):
    message, _, printed = _export_error(Pooled(), capfd)
    assert "in module '1.pool' (AdaptiveAvgPool2d)" in message
    assert "pools 14x14 to 4x4" in message and "inputs of 12x12 or 16x16" in message
    assert "{1, 2, 7, 14}" in message and "Please feel free" not in message and printed == ""


def test_verbose_prints_the_detail_of_a_failed_export(tmp_path, capsys, monkeypatch):
    def failing(*args, **kwargs):
        err = ConversionError("exporting stage 0 failed")
        err.detail = "what the exporter printed: graph(%x)"
        raise err
    monkeypatch.setattr("edgesdk.converters.stage_export.export_graph", failing)
    argv = ["convert", "--model", MODEL, "--random-weights", "--input-shape", "1,28,28",
            "--stages-attr", "blocks", "--heads-attr", "exits",
            "-o", tmp_path / "x.edgebundle"]
    code, _, err = cli(capsys, *argv)
    assert code == 4 and "graph(%x)" not in err
    code, _, err = cli(capsys, "--verbose", *argv)
    assert code == 4 and "what the exporter printed: graph(%x)" in err


def test_weights_that_do_not_fit_are_summarized_with_the_prefix_that_explains_them(
        tmp_path, capsys):
    from models import TinyNet
    state = {"module." + k: v for k, v in TinyNet().state_dict().items()}
    path = tmp_path / "w.pt"
    torch.save(state, str(path))
    code, _, err = cli(capsys, "convert", "--model", MODEL, "--weights", path,
                       "--input-shape", "1,28,28", "-o", tmp_path / "x.edgebundle")
    n = len(state)
    assert code == 4 and len(err) < 1000 and "{} of the model's {} tensors missing".format(n, n) in err
    assert "every key of the file starts with 'module.': strip it" in err
