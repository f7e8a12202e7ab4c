"""Export failures of research code as one line a user can act on.

When ``torch.onnx.export`` fails the exception's first line rarely says where: the TorchScript
exporter prints its IR graph to the process's stdout (C++, past Python's streams) and raises a
message about an operator. This module keeps that output out of the terminal (it goes into
the error's ``detail``, printed with ``--verbose``) and names the place that failed: the
innermost frame of the user's code in the traceback, else the module scope and source line
the IR records for the failing operator. Adaptive pooling whose output does not divide its
input gets the input sizes that would export.
"""
import contextlib
import linecache
import os
import re
import sys
import tempfile
import traceback

from edgesdk.errors import ConversionError


class Captured(object):
    """What the process wrote to stdout and stderr inside :func:`captured_output`."""
    text = ""


@contextlib.contextmanager
def captured_output():
    """Send file descriptors 1 and 2 (C++ prints included) to a temporary file for the
    block; yields a :class:`Captured` whose ``text`` is set when the block ends."""
    captured = Captured()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


def _library_dirs():
    """Folders of code that is not the user's: torch, edgesdk (its packages live apart)."""
    names = ("torch", "edgesdk", "edgesdk.converters", "edgesdk.runtime", "brevitas", "onnx")
    return tuple(os.path.dirname(os.path.abspath(sys.modules[n].__file__)) + os.sep
                 for n in names if getattr(sys.modules.get(n), "__file__", None))


def _user_frame(exc, module):
    """``(module path, class, file, line)`` of the innermost traceback frame in user code."""
    libraries = _library_dirs()
    names = dict((id(m), name) for name, m in module.named_modules())
    found = None
    tb = exc.__traceback__
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not path.startswith(libraries) and not tb.tb_frame.f_code.co_filename.startswith("<"):
            owner = tb.tb_frame.f_locals.get("self")
            found = (names.get(id(owner)), type(owner).__name__ if owner is not None else None,
                     path, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _ir_location(message, ir_text):
    """``(module path, class, file, line)`` the IR records for the operator ``message``
    names, or None."""
    ops = re.findall(r"aten::(\w+)", message) + re.findall(r"operator (\w+)", message)
    for op in ops:
        for line in ir_text.splitlines():
            if "aten::{}(".format(op) not in line:
                continue
            scope = re.search(r"scope: (\S+)", line)
            source = re.search(r"# (.+?):(\d+):\d+\s*$", line)
            path, cls = None, None
            if scope:
                parts = [p.split("::") for p in scope.group(1).split("/")]
                path = ".".join(p[1] for p in parts if len(p) == 2 and p[1]) or None
                cls = parts[-1][0].rsplit(".", 1)[-1]
            return path, cls, source.group(1) if source else None, \
                int(source.group(2)) if source else None
    return None


def _where(module_path, cls, path, line):
    parts = []
    if module_path:
        parts.append("in module '{}'{}".format(module_path, " ({})".format(cls) if cls else ""))
    elif cls:
        parts.append("in {}".format(cls))
    if path and not path.startswith(_library_dirs()):
        code = linecache.getline(path, line).strip()
        parts.append("at {}:{}{}".format(path, line, ": " + code if code else ""))
    return " ".join(parts)


def _adaptive_pool_hints(module, args):
    """What each adaptive pooling layer that ONNX cannot export would need, by running the
    module once with hooks."""
    import torch
    pools = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d,
             torch.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool3d)
    hints, hooks = [], []

    def check(name):
        def hook(layer, inputs):
            size = inputs[0].shape[2:]
            want = layer.output_size
            want = [want] * len(size) if isinstance(want, int) else list(want)
            want = [s if w is None else w for s, w in zip(size, want)]
            if all(s % w == 0 for s, w in zip(size, want)):
                return
            dims = lambda values: "x".join(str(int(v)) for v in values)  # noqa: E731
            lower = [max(w, s // w * w) for s, w in zip(size, want)]
            upper = [(s // w + 1) * w for s, w in zip(size, want)]
            divisors = [[d for d in range(1, s + 1) if s % d == 0] for s in size]
            hints.append(
                "'{}' ({}) pools {} to {}: ONNX export needs each input size to be a multiple "
                "of the output size (inputs of {} or {} here), or an output size dividing "
                "the input ({})".format(
                    name, type(layer).__name__, dims(size), dims(want), dims(lower), dims(upper),
                    " by ".join("{" + ", ".join(map(str, d)) + "}" for d in divisors)))
        return hook
    for name, layer in module.named_modules():
        if isinstance(layer, pools):
            hooks.append(layer.register_forward_pre_hook(check(name)))
    try:
        with torch.no_grad():
            module(*args)
    except Exception:  # noqa: BLE001 - hints only; the export error is reported anyway
        pass
    finally:
        for h in hooks:
            h.remove()
    return hints


def export_failure(exc, module, args, captured, what, opset):
    """The :class:`ConversionError` for ``exc`` raised exporting ``module(*args)``."""
    text = str(exc)
    # The first line, without the exporter's request for a pull request and its IR value.
    first = re.split(r"\s*(?:Please feel free to request|\[Caused by)", text.splitlines()[0])[0] \
        if text else ""
    frame = _user_frame(exc, module)
    ir = _ir_location(text, captured)
    where = _where(*(frame or ir)) if frame or ir else ""
    message = "exporting {} to ONNX opset {} failed{}: {}: {}".format(
        what, opset, " " + where if where else "", type(exc).__name__, first)
    if "adaptive_" in text and "factor of input size" in text:
        hints = _adaptive_pool_hints(module, args)
        if hints:
            message = message.rstrip(".") + ". " + "; ".join(hints)
    error = ConversionError(message)
    error.detail = "\n".join(
        ["what the exporter printed:", captured.strip() or "(nothing)", "traceback:",
         "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))])
    return error
