"""The toolchain contract: what ``edgesdk build --toolchain NAME`` asks of a backend's host half.

A toolchain class names itself and its default board, declares its own command-line options
(the CLI adds each flag once, and refuses a flag the chosen toolchain does not take), adds its
builds of a bundle's graphs to a :class:`~edgesdk.converters.draft.BundleDraft` (written and
verified once, after it returns) and then reports what it built. Toolchains are listed in
:data:`edgesdk.backends.TOOLCHAINS`; see docs/backends.md.
"""


class Toolchain(object):
    """Base class of the toolchains (see the module docstring).

    ``options``: ``(flag, argparse keyword arguments)`` pairs; every option's default must be
    falsy (None, False, []) so that a flag given to another toolchain can be told apart.
    """

    name = ""
    default_target = "host"
    options = ()

    def build(self, draft, target, args):
        """Add this toolchain's builds of the draft's graphs for the board ``target``, with the
        parsed ``args``; return what :meth:`report` prints. Nothing is written to the bundle
        until this returns (the caller finishes the draft)."""
        raise NotImplementedError

    def report(self, result, bundle, target, args):
        """Print what :meth:`build` returned (``args.json``: machine-readable) once the bundle
        at path ``bundle`` holds it, run any step that needs the written bundle (a check under
        emulation, engines built on this device), and return the exit code."""
        raise NotImplementedError


def option_dest(flag):
    """The attribute argparse stores a ``--flag-name`` in."""
    return flag.lstrip("-").replace("-", "_")


def parse_batch(text):
    """``--batch``: a positive integer or ``any`` (None)."""
    from edgesdk.errors import InputError
    if text == "any":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError("--batch takes a positive integer or 'any', got '{}'".format(text))
    return value
