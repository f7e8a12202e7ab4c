"""Board descriptions: the Jetson and Snapdragon boards users buy now, and boards described
in a user's TOML or JSON file, checked field by field."""
import json

import pytest

from edgesdk.errors import InputError
from edgesdk.targets import TARGETS, get_target

BOARD = {
    "name": "rock-5b", "description": "RK3588: 4x Cortex-A76 + 4x A55", "arch": "aarch64",
    "precisions": ["fp32", "int8"], "toolchains": ["onnxruntime", "tvm"], "glibc": "2.35",
    "memory_mb": 16384,
    "processors": [{"name": "cpu", "description": "4x Cortex-A76", "arch": "aarch64",
                    "cross_compiler": "aarch64-linux-gnu-g++",
                    "tvm_target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                   "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}}],
}
TOML = '''name = "rock-5b"
description = "RK3588: 4x Cortex-A76 + 4x A55"
arch = "aarch64"
precisions = ["fp32", "int8"]
toolchains = ["onnxruntime", "tvm"]
glibc = "2.35"
memory_mb = 16384

[[processors]]
name = "cpu"
description = "4x Cortex-A76"
arch = "aarch64"
cross_compiler = "aarch64-linux-gnu-g++"
tvm_target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a76", mattr = ["+neon", "+dotprod"] }
'''


def _write(tmp_path, board, name="board.json"):
    path = tmp_path / name
    path.write_text(json.dumps(board) if name.endswith(".json") else board)
    return str(path)


def test_jetsons_and_a_current_snapdragon_carry_their_vendors_facts():
    nano, nx = get_target("jetson-nano"), get_target("jetson-xavier-nx")
    orin, agx = get_target("jetson-orin-nano"), get_target("jetson-agx-orin")
    archs = {t.name: t.processor("gpu").tvm_target.get("tag") for t in (nano, nx, orin, agx)}
    assert archs == {"jetson-nano": "nvidia/jetson-nano",
                     "jetson-xavier-nx": "nvidia/jetson-agx-xavier",
                     "jetson-orin-nano": "nvidia/jetson-orin-nano",
                     "jetson-agx-orin": "nvidia/jetson-agx-orin-64gb"}
    assert [t.tensorrt for t in (nano, nx, orin, agx)] == ["8.2", "8.5", "10", "10"]
    assert [t.glibc for t in (nano, nx, orin, agx)] == ["2.27", "2.31", "2.35", "2.35"]
    assert "int8" in nano.slow_precisions and not orin.slow_precisions
    assert "sm_53" in nano.processor("gpu").device_build
    assert all("sm_87" in t.processor("gpu").device_build for t in (orin, agx))
    # DLA on Xavier and AGX Orin only; 2:4 sparsity on Orin only.
    dla = {t.name for t in (nano, nx, orin, agx) if any("2 NVDLA" in n for n in t.notes)}
    sparse = {t.name for t in (nano, nx, orin, agx)
              if any("2:4" in n and "sparse Tensor Cores run" in n for n in t.notes)}
    assert dla == {"jetson-xavier-nx", "jetson-agx-orin"}
    assert sparse == {"jetson-orin-nano", "jetson-agx-orin"}
    sd = get_target("snapdragon-8-gen-3-android")
    assert sd.os == "android" and "+i8mm" in sd.processor("cpu").tvm_target["mattr"]
    assert sd.onnxruntime_providers["int8"][0] == "QNNExecutionProvider"


def test_every_built_in_tensorrt_release_has_an_operator_table():
    from edgesdk.converters.tensorrt.ops import tensorrt_ops
    for name in TARGETS.names():
        t = TARGETS.get(name)
        if t.tensorrt:
            ops = tensorrt_ops(t.tensorrt)
            assert t.max_opset is None or t.max_opset <= ops.opsets[1], name


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_board_file_describes_a_board(tmp_path, suffix):
    path = _write(tmp_path, BOARD if suffix == ".json" else TOML, "board" + suffix)
    t = get_target(path)
    assert t.name == "rock-5b" and t.precisions == ("fp32", "int8") and t.memory_mb == 16384
    assert t.processor("cpu").tvm_target["mcpu"] == "cortex-a76"
    assert list(t.formats) == ["onnx", "tvm"]


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"name": "jetson-tx2"}, "built-in board"),
    ({"precisions": ["int8"]}, "must include fp32"),
    ({"precisions": ["fp32", "int4"]}, "unknown int4"),
    ({"arch": "riscv64"}, "board.arch: expected one of"),
    ({"toolchains": ["onnxruntime", "tensorrt"]}, "board.tensorrt"),
    ({"memory_mb": -1}, "board.memory_mb: expected an integer >= 1"),
    ({"memory_mb": True}, "board.memory_mb"),
    ({"processors": [{"name": "cpu"}]}, "board.processors[0]: missing required field(s)"),
    ({"processors": [dict(BOARD["processors"][0], tvm_target="llvm")]},
     "board.processors[0].tvm_target"),
    ({"toolchains": ["onnxruntime", "hls4ml"]}, "board.fabric"),
])
def test_a_bad_board_file_names_the_field(tmp_path, change, message):
    path = _write(tmp_path, dict(BOARD, **change))
    with pytest.raises(InputError) as err:
        get_target(path)
    assert message in str(err.value) and path in str(err.value)


def test_unreadable_or_missing_board_files_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        get_target(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(InputError, match="cannot be read"):
        get_target(str(bad))


def test_cli_checks_a_board_file_and_builds_for_it(tmp_path, bundle, capsys):
    pytest.importorskip("tvm")
    from conftest import cli
    path = _write(tmp_path, TOML, "rock.toml")
    code, out, _ = cli(capsys, "targets", path)
    assert code == 0 and json.loads(out)["name"] == "rock-5b"
    code, out, err = cli(capsys, "build", bundle, "--target", path)
    assert code == 0, err
    from edgesdk.bundle import read_bundle
    builds = read_bundle(bundle).manifest["stages"][0]["builds"]
    assert [b["device"] for b in builds if b["format"] == "tvm"] == ["rock-5b-cpu"]


def test_a_tvm_target_string_dict_or_tag_is_a_board_for_tvm_builds():
    from edgesdk.targets.from_file import parse_tvm_target
    text = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a55 -mattr=+neon,+dotprod -num-cores=4"
    assert parse_tvm_target(text) == {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                      "mcpu": "cortex-a55", "mattr": ["+neon", "+dotprod"],
                                      "num-cores": 4}
    board = get_target(text)
    assert board.name.startswith("tvm-") and board.arch == "aarch64"
    assert board.processor("cpu").cross_compiler == "aarch64-linux-gnu-g++"
    assert get_target('{"kind": "llvm", "mcpu": "znver4"}').processor("cpu").tvm_target == \
        {"kind": "llvm", "mcpu": "znver4"}
    tag = get_target("nvidia/jetson-orin-nano")
    assert tag.arch == "aarch64" and tag.processor("gpu").kernels == "cuda"
    with pytest.raises(InputError, match="is not -key=value"):
        get_target("llvm mcpu=x")
    with pytest.raises(InputError, match="not a JSON dict"):
        get_target("{kind")


def test_a_tvm_target_string_builds_and_runs_under_qemu(bundle):
    pytest.importorskip("tvm")
    from edgesdk.converters.tvm.emulation import check_emulated
    from edgesdk.converters.tvm.build import build_name, build_tvm
    text = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a55 -mattr=+neon,+dotprod"
    records = build_tvm(bundle, text, "cpu", progress=False)
    assert all(r["arch"] == "aarch64" and r["tvm"]["target"]["mcpu"] == "cortex-a55"
               for r in records)
    assert check_emulated(bundle, build_name(text, "cpu"))["passed"]
