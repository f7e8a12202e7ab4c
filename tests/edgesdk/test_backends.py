"""The backends table: every format has an executor on the contract, every board's
toolchains are known and its formats follow from them."""
from edgesdk.backends import (EXECUTORS, FORMATS, TOOLCHAIN_FORMATS, TOOLCHAIN_NAMES,
                              formats_of)
from edgesdk.runtime.executors.base import Executor
from edgesdk.targets import TARGETS, get_target


def test_every_format_has_an_executor_on_the_contract():
    for name in FORMATS:
        cls = EXECUTORS.get(name)
        assert issubclass(cls, Executor), name
        assert cls.available({"file": "x", "format": name}) is None   # no arch: runs anywhere
        assert "built for" in cls.available({"file": "x", "format": name, "arch": "riscv128"})


def test_board_formats_follow_from_their_toolchains():
    assert set(TOOLCHAIN_NAMES) < set(TOOLCHAIN_FORMATS)
    assert {f for fs in TOOLCHAIN_FORMATS.values() for f in fs} == set(FORMATS)
    for name in TARGETS.names():
        target = get_target(name)
        assert set(target.toolchains) <= set(TOOLCHAIN_FORMATS), name
        assert target.formats == formats_of(target.toolchains) and "onnx" in target.formats
    assert get_target("jetson-tx2").formats == ("onnx", "tvm", "tensorrt")
    assert get_target("ultra96-v2").formats == ("onnx", "fpga-csim", "pynq")


def test_every_build_toolchain_is_on_the_contract():
    from edgesdk.backends import BUILD_TOOLCHAINS
    from edgesdk.converters.toolchain import Toolchain
    for name in TOOLCHAIN_NAMES:
        cls = BUILD_TOOLCHAINS.get(name)
        assert issubclass(cls, Toolchain) and cls.name == name
        assert cls.default_target in TARGETS and name in get_target(cls.default_target).toolchains
        for flag, kwargs in cls.options:
            # A falsy default tells "not given" from given, for the other toolchains' check.
            assert flag.startswith("--") and not kwargs.get("default"), (name, flag)
