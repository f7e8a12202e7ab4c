"""The CPU model and kernel-selecting features, read from cpuinfo files as x86 and Arm
kernels write them, and recorded in the device description profiles are keyed by."""
from edgesdk.runtime.cpu_features import cpu_flags, cpu_model, kernel_features

X86 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
       "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
       "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2\n")
ARM = ("processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\n"
       "CPU implementer\t: 0x41\n\nHardware\t: Qualcomm Technologies, Inc SM8250\n")


def test_x86_features_come_from_the_first_cores_flags(tmp_path):
    info = tmp_path / "x86"
    info.write_text(X86)
    assert cpu_model(str(info)) == "AMD EPYC"
    assert kernel_features(str(info)) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw",
                                          "avx512_vnni", "avx512_bf16"]
    assert "fpu" in cpu_flags(str(info)) and "fpu" not in kernel_features(str(info))


def test_arm_features_and_the_soc_name(tmp_path):
    info = tmp_path / "arm"
    info.write_text(ARM)
    assert cpu_model(str(info)) == "Qualcomm Technologies, Inc SM8250"
    assert kernel_features(str(info)) == ["asimd", "asimddp", "i8mm"]


def test_an_unreadable_cpuinfo_gives_no_features(tmp_path):
    missing = str(tmp_path / "missing")
    assert kernel_features(missing) == [] and cpu_flags(missing) == set()
    assert cpu_model(missing)   # platform's name, or "unknown cpu"


def test_the_device_description_names_the_cpus_features():
    from edgesdk.profiles import device_description
    desc = device_description()
    assert desc["cpu_features"] == kernel_features()
