"""Options and printers the device runtime's verbs share (Python 3.6 compatible)."""
import argparse

from edgesdk.errors import InputError


def parse_thresholds(text):
    """``--thresholds``: ``"0.9,none,0.8"`` -> ``['0.9', None, '0.8']`` (validated by the model)."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        out.append(None if part in ("none", "off", "-") else part)
    return out


def add_builds_argument(p, verb):
    """``--builds``, as run and validate take it."""
    p.add_argument("--builds", type=parse_build_request, metavar="BUILD[,fallback]",
                   help="{} other builds than the selected ones: a precision (int8), a format "
                        "(tvm) or FORMAT:PRECISION (onnx:fp32). A graph without that build is "
                        "an error, unless ',fallback' is added (it then uses its selected "
                        "build)".format(verb))


def parse_build_request(text):
    """One ``--builds`` value, for argparse (its error says what is wrong)."""
    from edgesdk.runtime.build_select import parse_request
    try:
        return parse_request(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def add_providers_argument(p):
    """``--providers``: ONNX Runtime execution providers for the ONNX builds."""
    p.add_argument("--providers", type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
                   metavar="NAME[,NAME...]",
                   help="ONNX Runtime execution providers for the ONNX builds, preferred first "
                        "(e.g. QNNExecutionProvider); the CPU's runs what they leave. Each "
                        "must be in this onnxruntime. Default: the board's recorded at "
                        "conversion, of those this onnxruntime has")


def builds_option(args):
    """``(request, fallback)`` from ``--builds`` (``(None, False)`` without it)."""
    return args.builds if args.builds else (None, False)


def print_builds(ran):
    """One line per distinct build: which graphs ran with it."""
    from edgesdk.runtime.build_select import build_name
    groups = {}
    for gid, b in ran.items():
        groups.setdefault(build_name(b), []).append(gid)
    for name, gids in sorted(groups.items()):
        print("builds run: {}: {}".format(name, ", ".join(gids)))


def parse_batch_sizes(text):
    """``"1,8,64"`` -> ``[1, 8, 64]``."""
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise InputError("--batch-sizes must be comma-separated integers, e.g. 1,8,64")


def add_trusted_key_argument(p):
    """``--trusted-key``: load only bundles signed by one of these keys."""
    p.add_argument("--trusted-key", action="append", metavar="KEY.pub",
                   help="public key file (or hex) of a signer you trust; the bundle must carry "
                        "a valid signature by one of them (repeatable)")


def add_wait_argument(p):
    """``--wait``, for the verbs that write a bundle (see :func:`edgesdk.atomic.writer_lock`)."""
    p.add_argument("--wait", action="store_true",
                   help="if another edgesdk process is writing the bundle, wait for it "
                        "(default: fail at once, changing nothing)")
