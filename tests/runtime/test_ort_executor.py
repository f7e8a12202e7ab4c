"""The ONNX Runtime executor's per-CPU INT8 setting."""
from edgesdk.runtime.executors.ort import needs_high_precision_int8


def test_high_precision_int8_only_without_vnni(tmp_path):
    cases = {"avx2 fma sse4_2": True, "avx2 avx512f avx512_vnni": False, "avx2 avx_vnni": False}
    for i, (flags, expected) in enumerate(cases.items()):
        info = tmp_path / "cpuinfo{}".format(i)
        info.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: {}\n".format(flags))
        assert needs_high_precision_int8(str(info)) is expected, flags
    # Flags that cannot be read: the setting that is always correct.
    assert needs_high_precision_int8(str(tmp_path / "missing")) is True
