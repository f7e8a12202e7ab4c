"""Checks of a compiled library against the board it is for: ELF machine, needed shared
libraries, and the newest glibc symbol version it asks for.

A library built against a newer C library than the board's fails to load there with
"version `GLIBC_2.xx' not found"; checking the symbol versions on the host finds that before
the bundle travels.
"""
from edgesdk.deps import require
from edgesdk.errors import BuildError

# ELF e_machine names (pyelftools) for the arch names targets use.
MACHINES = {"aarch64": "EM_AARCH64", "x86_64": "EM_X86_64", "armv7l": "EM_ARM"}


def _version_key(version):
    return tuple(int(p) for p in version.split("."))


def inspect_elf(path):
    """``{"machine", "needed", "glibc"}`` of a shared library: its ELF machine, its DT_NEEDED
    libraries, and the newest ``GLIBC_x.y`` version among the symbols it imports."""
    require("elftools", "tvm", "check compiled libraries")
    from elftools.elf.elffile import ELFFile
    from elftools.common.exceptions import ELFError
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            machine = elf["e_machine"]
            needed, versions = [], set()
            for section in elf.iter_sections():
                if section.name == ".dynamic":
                    needed = [t.needed for t in section.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
                elif section.name == ".gnu.version_r":
                    for _, auxiliaries in section.iter_versions():
                        versions.update(a.name for a in auxiliaries)
    except ELFError as exc:
        raise BuildError("'{}' is not a valid ELF library: {}".format(path, exc))
    glibc = sorted((v[len("GLIBC_"):] for v in versions
                    if v.startswith("GLIBC_") and v[len("GLIBC_"):].replace(".", "").isdigit()),
                   key=_version_key)
    return {"machine": machine, "needed": needed, "glibc": glibc[-1] if glibc else None}


def check_library(path, arch, glibc=None):
    """Inspect ``path`` and refuse it unless it is for ``arch`` and (with ``glibc``, the
    board's C library version) needs no newer glibc symbol. Returns :func:`inspect_elf`'s dict."""
    info = inspect_elf(path)
    want = MACHINES.get(arch)
    if want and info["machine"] != want:
        raise BuildError("'{}' is built for {}, the board is {} ({})".format(
            path, info["machine"], arch, want))
    if glibc and info["glibc"] and _version_key(info["glibc"]) > _version_key(glibc):
        raise BuildError("'{}' needs glibc {} symbols; the board has glibc {}. Build with a "
                         "toolchain whose C library is not newer than the board's".format(
                             path, info["glibc"], glibc))
    return info
