"""aarch64 TVM builds run under qemu-user with the aarch64 TVM runtime and match ONNX Runtime
on x86 at every exit; the CLI's --emulate does the same check; `edgesdk targets` lists boards."""
import json

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgesdk.cli import main  # noqa: E402
from edgesdk.converters.tvm.build import build_tvm  # noqa: E402
from edgesdk.converters.tvm.emulation import check_emulated, prepare, run_library  # noqa: E402
from edgesdk.errors import BuildError  # noqa: E402


def test_tx2_cpu_build_matches_onnxruntime_under_qemu(bundle, mnist_split):
    _, (x, _) = mnist_split
    build_tvm(bundle, "jetson-tx2", "cpu", batch=None, progress=False)
    check = check_emulated(bundle, "jetson-tx2-cpu", x[:16])
    assert check["samples"] == 16 and len(check["max_abs_error"]) == 3
    assert check["passed"] and max(check["max_abs_error"]) < 1e-4


def test_cli_build_emulate_on_snapdragon_cpu(bundle, capsys):
    code = main(["build", bundle, "--target", "snapdragon-865", "--batch", "4", "--emulate"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "EM_AARCH64" in out and "under qemu-aarch64 vs ONNX Runtime on 8 reference samples" in out
    assert out.rstrip().endswith("ok")


def test_a_library_for_another_machine_fails_under_qemu_with_the_runner_message(bundle):
    records = build_tvm(bundle, "host", "cpu", progress=False)
    lib = bundle + "/" + records[0]["file"]
    with pytest.raises(BuildError, match="failed under qemu-aarch64: .*tvm_runner"):
        run_library(lib, [np.zeros((1, 1, 28, 28), np.float32)], prepare())


def test_targets_verb_lists_every_board_with_processors(capsys):
    assert main(["targets", "--json"]) == 0
    boards = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert set(boards) >= {"host", "jetson-tx2", "snapdragon-865", "snapdragon-865-android"}
    tx2 = boards["jetson-tx2"]
    assert tx2["glibc"] == "2.27" and tx2["build_on"]["tensorrt"] == "device"
    gpu = next(p for p in tx2["processors"] if p["name"] == "gpu")
    assert gpu["tvm_target"]["tag"] == "nvidia/jetson-tx2" and gpu["kernels"] == "cuda"
    sd_cpu = boards["snapdragon-865"]["processors"][0]["tvm_target"]
    assert "+dotprod" in sd_cpu["mattr"]
    assert boards["snapdragon-865-android"]["processors"][0]["artifact"] == "object-archive"
    assert main(["targets"]) == 0
    table = capsys.readouterr().out
    assert "jetson-tx2" in table and "cpu,gpu(cuda)" in table and "gpu(opencl)" in table
