"""The toolchain contract: what ``edgesdk build --toolchain NAME`` asks of a backend's host half.

A toolchain class names itself and its default board, declares its own command-line options
(the CLI adds each flag once, and refuses a flag the chosen toolchain does not take), and
builds a bundle's graphs for a board in place, printing what it built. Toolchains are listed
in :data:`edgesdk.backends.TOOLCHAINS`; see docs/backends.md.
"""


class Toolchain(object):
    """Base class of the toolchains (see the module docstring).

    ``options``: ``(flag, argparse keyword arguments)`` pairs; every option's default must be
    falsy (None, False, []) so that a flag given to another toolchain can be told apart.
    """

    name = ""
    default_target = "host"
    options = ()

    def build(self, bundle, target, args):
        """Build ``bundle`` (a path, rewritten in place) for the board ``target`` with the
        parsed ``args`` (``args.json``: machine-readable output); print what was built and
        return the exit code."""
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
