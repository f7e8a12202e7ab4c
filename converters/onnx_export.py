"""Export one stage or head to its own ONNX graph and check it."""
import io
import warnings

from edgesdk.deps import require
from edgesdk.converters.export_errors import captured_output, export_failure
from edgesdk.errors import ConversionError, ModelStructureError

DEFAULT_OPSET = 13  # TensorRT 8.2 on the TX2 parses opset <= 13


def export_graph(module, args, input_names, output_names, opset, what, qonnx=False,
                 on_unused=None, dynamic=None):
    """Export ``module(*args)`` with a dynamic batch dimension; returns a checked ModelProto.

    Uses the TorchScript exporter (``dynamo=False``): the dynamo exporter writes opset >= 18
    only, which TensorRT 8.2 cannot read. ``what`` names the graph in error messages.
    ``qonnx``: the module holds Brevitas layers; it is exported with Brevitas as QONNX and
    the graph returned is its QCDQ form (what ONNX Runtime runs); the QONNX graph itself is
    returned beside it: ``(qcdq, qonnx)``. An input the graph does not read is an error,
    unless ``on_unused`` is given: the input is then kept in the graph (the runtime feeds
    tensors by position) and ``on_unused`` called with the names of those inputs.
    ``dynamic``: ``{tensor name: {axis: name}}`` of further dynamic dimensions.
    """
    torch = require("torch", "torch", "export stages to ONNX")
    onnx = require("onnx", "onnx", "export stages to ONNX")
    buf = io.BytesIO()
    axes = {name: {0: "N"} for name in list(input_names) + list(output_names)}
    for name, more in (dynamic or {}).items():
        axes[name].update(more)
    kwargs = dict(opset_version=opset, input_names=list(input_names),
                  output_names=list(output_names), dynamic_axes=axes)
    try:
        with warnings.catch_warnings(), torch.no_grad(), captured_output() as printed:
            warnings.simplefilter("ignore")
            if qonnx:
                from edgesdk.converters.qat import export_brevitas
                source, model = export_brevitas(module, tuple(args), kwargs)
            else:
                torch.onnx.export(module, tuple(args), buf, dynamo=False,
                                  do_constant_folding=True, **kwargs)
    except (ConversionError, ModelStructureError):
        raise
    except Exception as exc:
        raise export_failure(exc, module, args, printed.text, what, opset)
    if not qonnx:
        model = onnx.load_from_string(buf.getvalue())
    # onnx 1.23 stamps IR version 14, which onnxruntime 1.31 (and older runtimes on boards)
    # refuse; the lowest IR version that carries this opset is what every reader accepts.
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    unused = _check_inputs_used(model, input_names, args, what, on_unused is not None)
    if unused:
        on_unused(unused)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ConversionError("onnx.checker rejected {}: {}".format(what, exc))
    if qonnx:
        source.ir_version = model.ir_version
        return model, source
    return model


def _check_inputs_used(model, input_names, args, what, keep):
    """Every state tensor handed to a graph must be read by it (else the state is wrong), or
    with ``keep``, is put back as an input no node reads; returns the names put back."""
    onnx = require("onnx", "onnx", "export stages to ONNX")
    present = {i.name: i for i in model.graph.input}
    consumed = {name for node in model.graph.node for name in node.input}
    consumed |= {o.name for o in model.graph.output}
    unused = [name for name in input_names if name not in present or name not in consumed]
    if unused and not keep:
        i = list(input_names).index(unused[0])
        raise ModelStructureError(
            "{} does not use its input {} ('{}'): the previous stage's output {} does not "
            "feed it. Return only the tensors the next stage and head need.".format(
                what, i, unused[0], i))
    if unused:
        weights = [i for i in model.graph.input if i.name not in input_names]
        inputs = [present.get(name) or onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(tensor.numpy().dtype),
            ["N"] + list(tensor.shape[1:])) for name, tensor in zip(input_names, args)]
        del model.graph.input[:]
        model.graph.input.extend(inputs + weights)
    return unused
