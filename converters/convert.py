"""PyTorch multi-exit model -> verified bundle (one ONNX graph per stage and per exit head)."""
import datetime
import hashlib
import os
import platform
from dataclasses import dataclass, field

import numpy as np

import edgesdk
from edgesdk import bundle as bundle_io
from edgesdk.deps import require
from edgesdk.errors import ConversionError, InputError
from edgesdk.manifest import SCHEMA_VERSION
from edgesdk.progress import Progress
from edgesdk.converters.macs import count_macs
from edgesdk.converters.memory import activation_bytes
from edgesdk.converters.model import as_state, chain, split_model, trace_structure
from edgesdk.converters.onnx_export import DEFAULT_OPSET, export_graph
from edgesdk.converters.precision import PrecisionPlan, check_calibration, plan_precisions
from edgesdk.converters.qat import (QAT_ATOL, QAT_RTOL, frozen_copy, quant_bit_widths,
                                    quantization_aware_kind, validate_qat_graphs)
from edgesdk.converters.pruning import make_dense, sparsity_report
from edgesdk.converters.selection import DEFAULT_EXIT_ACCURACY_DROP, DEFAULT_MIN_AGREEMENT
from edgesdk.runtime.input_stats import summarize
from edgesdk.runtime.reference import REDUCED_PRECISION_ATOL, REDUCED_PRECISION_RTOL
from edgesdk.targets import get_target

INPUT_NAME = "x"
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
MIB = 1 << 20


@dataclass
class ConversionReport:
    """What :func:`convert` wrote and measured."""

    path: str
    max_abs_error: list          # per exit: ONNX Runtime vs PyTorch on the reference inputs
    stage_macs: list
    exit_macs: list
    files: dict = field(default_factory=dict)
    builds: dict = field(default_factory=dict)        # graph id -> extra builds' top-1 agreement
    choices: dict = None                                # what --profile chose (None without it)
    exit_table: list = None                             # per exit: fp32 vs selected builds
    precision_warnings: list = field(default_factory=list)
    macs_uncounted: dict = field(default_factory=dict)  # graph id -> nodes left out of its MACs
    input_statistics: dict = None                       # per channel, after preprocessing


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state_names(k, n):
    return [INPUT_NAME] if k < 0 else ["s{}_{}".format(k, i) for i in range(n)]


def _model_sha256(model):
    """A hash of the parameters and buffers (names, shapes, bytes): provenance without pickles."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(list(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _as_tensor(x, what):
    torch = require("torch", "torch", "convert PyTorch models")
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise InputError("{} must be a float tensor or array with a batch dimension first, got {}"
                         .format(what, getattr(x, "shape", type(x).__name__)))
    if not torch.isfinite(x).all():
        raise InputError("{} contains NaN or infinite values".format(what))
    return x.float().contiguous()


def _versions():
    out = {"edgesdk": edgesdk.__version__, "python": platform.python_version(),
           "machine": platform.machine()}
    for mod, extra in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnx")):
        out[mod] = require(mod, extra, "convert models").__version__
    return out


def convert(model, example_input, output, *, stages_attr="stages", heads_attr="heads",
            target="host", opset=DEFAULT_OPSET, policy="max-softmax", threshold=None,
            preprocessing=None, reference_input=None, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL,
            name=None, class_names=None, force=False, threads=None, progress=True,
            precisions=None, quantize=None, calibration_data=None, calibration_method="minmax",
            profile=None, device=None, profile_metric="mean_ms", profile_batch=1,
            min_agreement=DEFAULT_MIN_AGREEMENT, exit_accuracy_drop=DEFAULT_EXIT_ACCURACY_DROP,
            pruning=None, exit_aware=False):
    """Convert a PyTorch multi-exit model into a verified bundle directory at ``output``.

    ``model``: a :func:`MultiExitModel` or any ``nn.Module`` with its stages and heads in two
    ``nn.ModuleList`` attributes (``stages_attr``, ``heads_attr``) whose forward returns the
    list of exit logits. ``example_input``: a batch ``(N, ...)`` fixing the input shape (the
    batch dimension stays dynamic). ``reference_input`` (default: the example) is run through
    PyTorch and ONNX Runtime; every exit must agree within ``|ort - torch| <= atol + rtol *
    |torch|`` and the data is stored for ``edgesdk validate --check``. ``threshold`` sets
    every early exit's threshold (None: early exits off until calibrated).

    ``precisions``: builds to write for every graph beside FP32, among the target's (``int8``:
    QDQ copies, activation ranges from ``calibration_data`` with ``calibration_method``;
    ``fp16``).
    ``quantize``: the precision every graph runs (default: the target's, see
    :mod:`edgesdk.converters.precision`). ``calibration_data``: real preprocessed inputs, or
    ``(x, y)`` with integer labels; extra builds record their top-1 agreement with FP32 on it,
    and the report's ``exit_table`` compares accuracy per exit. ``pruning``: records of how
    the model was pruned (:func:`~edgesdk.converters.pruning.prune_channels`) for the
    manifest; ``torch.nn.utils.prune`` masks are folded into dense weights and their sparsity
    (and 2:4 pattern) recorded. ``exit_aware``: calibrate INT8 stage k only on the samples
    that reach it under ``threshold``. ``profile``: a profile store with this very bundle's
    graphs measured on the board (``edgesdk profile``): each graph's build and the exits
    worth keeping are then chosen from the measured ``profile_metric`` at ``profile_batch``
    (see :mod:`edgesdk.converters.selection`).

    Written to a temporary directory and renamed: a failure leaves nothing behind.
    """
    from edgesdk.runtime.engine import load_bundle
    from edgesdk.runtime.policies import get_policy
    torch = require("torch", "torch", "convert PyTorch models")
    require("onnxruntime", "onnx", "verify converted stages")
    tgt = get_target(target)
    if "onnx" not in tgt.formats:
        raise InputError("target '{}' takes {} builds; this converter writes onnx".format(
            target, ", ".join(tgt.formats)))
    if not 7 <= int(opset) <= 20:
        raise InputError("opset {} is outside 7..20, what the TorchScript exporter writes".format(opset))
    if tgt.max_opset is not None and opset > tgt.max_opset:
        raise InputError("target '{}' reads ONNX opset <= {}; got --opset {}".format(
            target, tgt.max_opset, opset))
    qat = quantization_aware_kind(model)
    if qat:
        if quantize is not None or precisions or profile:
            raise InputError("this model is already quantized (quantization-aware training: "
                             "{} layers) and converts as INT8 as it is; quantizing it again "
                             "would quantize twice: drop quantize/precisions/profile".format(
                                 "Brevitas" if qat == "brevitas" else "fake-quantize"))
        model = frozen_copy(model)
        plan = PrecisionPlan(["int8"], "int8", tgt.precision_rules(), source=(
            "quantization-aware training (Brevitas: QONNX, run as QCDQ)" if qat == "brevitas"
            else "quantization-aware training (Q/DQ from fake quantization)"))
        atol, rtol = max(atol, QAT_ATOL), max(rtol, QAT_RTOL)
        calib_x, calib_y = None, None
    else:
        plan = plan_precisions(tgt, precisions, quantize, calibration_data is not None, profile)
        calib_x, calib_y = check_calibration(calibration_data, plan, profile)
    pruning = list(pruning or [])
    model, had_masks = make_dense(model)
    if had_masks:
        pruning.append(sparsity_report(model))
    stages, heads = split_model(model, stages_attr, heads_attr)
    pol = get_policy(policy)
    example = _as_tensor(example_input, "example_input")
    reference = example if reference_input is None else _as_tensor(reference_input, "reference_input")
    if reference.shape[1:] != example.shape[1:]:
        raise InputError("reference_input shape {} differs from example_input {}".format(
            list(reference.shape), list(example.shape)))
    output = os.path.abspath(output)
    if not output.endswith(bundle_io.SUFFIX):
        raise InputError("bundle paths end in '{}': got '{}'".format(bundle_io.SUFFIX, output))
    name = name or os.path.basename(output)[:-len(bundle_io.SUFFIX)]

    was_training = model.training
    model.eval()
    try:
        # Trace with at least 2 samples so a tensor that lost its batch dimension shows up.
        trace_input = example if example.shape[0] > 1 else torch.cat([example, example])
        structure = trace_structure(model, stages, heads, trace_input)
        thr = pol.check_threshold(threshold, structure.num_classes, "threshold")
        if class_names is not None and len(class_names) != structure.num_classes:
            raise InputError("{} class names given, the heads have {} classes".format(
                len(class_names), structure.num_classes))
        with torch.no_grad():
            ref_logits = [t.numpy() for t in chain(stages, heads, (reference,))]
        with bundle_io.staging_directory(output, force=force) as tmp:
            if calib_x is not None and calib_x.shape[1:] != example.shape[1:]:
                raise InputError("calibration data shape {} differs from example_input {}".format(
                    list(calib_x.shape), list(example.shape)))
            # What inputs looked like (after preprocessing): the runtime warns on batches far
            # outside it (raw pixels taken as model input).
            stats = summarize(calib_x, "the calibration data") if calib_x is not None else \
                summarize(example.numpy(), "the example input")
            report = _write(tmp, output, stages, heads, structure, example, reference, ref_logits,
                            opset, pol, thr, preprocessing, atol, rtol, name, class_names, tgt,
                            model, progress, pruning, qat, stats)
            report.input_statistics = stats
            verified = load_bundle(tmp, threads=threads)
            report.max_abs_error = _verify(verified, reference.numpy(), ref_logits, atol, rtol)
            # Agreement of FP16 builds is checked on the reference inputs when no calibration
            # data was given (FP16 needs none to build).
            _extra_builds(tmp, report, plan, tgt,
                          calib_x if calib_x is not None else reference.numpy(), calib_y,
                          calibration_method, profile, device, profile_metric, profile_batch,
                          min_agreement, exit_accuracy_drop, exit_aware)
            bundle_io.read_bundle(tmp)  # every file against its final hash, once
    finally:
        model.train(was_training)
    return report


def _extra_builds(root, report, plan, target, x, y, calibration_method, profile, device, metric,
                  batch, min_agreement, exit_accuracy_drop, exit_aware):
    """Reduced-precision builds, their agreement with FP32, the selection (the plan's, or the
    profile's per graph) and the per-exit table on the calibration data.

    The staging directory is re-read between steps without re-hashing every file (each step
    updates the hashes it changes); convert verifies all of them once at the end."""
    from edgesdk.converters.builds import add_builds, record_agreement
    from edgesdk.converters.precision import check_int8_rules, exit_agreement_table, select_precision
    baseline = None
    if len(plan.precisions) > 1:
        add_builds(root, plan.precisions, x, calibration_method,
                   symmetric=target.int8_activations == "int8-symmetric", exit_aware=exit_aware)
        check_int8_rules(root, target)
        baseline = record_agreement(root, x)
        manifest = bundle_io.read_bundle(root, verify=False).manifest
        report.builds = {e["id"]: {b["precision"]: b.get("top1_agreement", 1.0) for b in e["builds"]}
                         for e in manifest["stages"] + manifest["exits"]}
    if profile is not None:
        from edgesdk.converters.selection import apply_profile
        report.choices = apply_profile(root, profile, x, y, device, metric, batch, min_agreement,
                                       exit_accuracy_drop, baseline)
    select_precision(root, plan, per_graph=profile is not None)
    report.precision_warnings = plan.warnings
    if x is not None and len(plan.precisions) > 1:
        report.exit_table = exit_agreement_table(root, x, y)
        manifest = bundle_io.read_bundle(root, verify=False).manifest
        manifest["quantization"].update(exit_table=report.exit_table, exit_table_samples=int(len(x)))
        bundle_io.write_manifest(root, manifest)
    _refresh_reference(root)


def _refresh_reference(root):
    """Reference outputs of the selected builds (``validate --check`` compares against them).

    INT8 kernels may round differently on another instruction set; their tolerance is wider.
    """
    from edgesdk.runtime.engine import EdgeModel
    bundle = bundle_io.read_bundle(root, verify=False)
    manifest = bundle.manifest
    if all(e.get("precision", "fp32") == "fp32" for e in manifest["stages"] + manifest["exits"]):
        return
    ref = manifest["reference"]
    with np.load(bundle.path(ref["file"]), allow_pickle=False) as data:
        arrays = {"input": data["input"]}
    logits = EdgeModel(bundle).exit_logits(arrays["input"])
    arrays.update({"exit_{}".format(k): l for k, l in enumerate(logits)})
    np.savez(bundle.path(ref["file"]), **arrays)
    manifest["files"].update(bundle_io.hash_files(root, [ref["file"]]))
    ref.update(atol=REDUCED_PRECISION_ATOL, rtol=REDUCED_PRECISION_RTOL,
               note="outputs of the selected builds (not PyTorch's): some are reduced precision")
    bundle_io.write_manifest(root, manifest)


def _verify(model, x, expected, atol, rtol):
    from edgesdk.runtime.reference import compare_exits
    errors, bad = compare_exits(model.exit_logits(x), expected, atol, rtol)
    if bad:
        raise ConversionError(
            "ONNX Runtime disagrees with PyTorch at exit(s) {}: max abs error per exit {} exceeds "
            "atol={} + rtol={} * |logit|. Nothing was written.".format(
                bad, ["{:.3g}".format(e) for e in errors], atol, rtol))
    return errors


def _write(tmp, output, stages, heads, structure, example, reference, ref_logits, opset, pol,
           thr, preprocessing, atol, rtol, name, class_names, tgt, model, progress, pruning, qat,
           input_stats):
    onnx = require("onnx", "onnx", "write ONNX stages")
    os.makedirs(os.path.join(tmp, "stages"))
    os.makedirs(os.path.join(tmp, "heads"))
    os.makedirs(os.path.join(tmp, "reference"))
    n_exits = len(stages)
    stage_entries, exit_entries, files, exported = [], [], [], {}
    peak_bytes = 0
    torch = require("torch", "torch", "export stages to ONNX")
    state = (example,)
    with Progress(2 * n_exits, "exporting", enabled=progress) as bar:
        for k, (stage, head) in enumerate(zip(stages, heads)):
            in_names = _state_names(k - 1, len(state))
            with torch.no_grad():
                nxt = as_state(stage(*state))
            out_names = _state_names(k, len(nxt))
            for gid, folder, module, args, ins, outs, entries in (
                    ("stage{}".format(k), "stages", stage, state, in_names, out_names, stage_entries),
                    ("exit{}".format(k), "heads", head, nxt, out_names, ["logits"], exit_entries)):
                graph = export_graph(module, args, ins, outs, opset,
                                     "{} {} ({})".format(folder[:-1], k, type(module).__name__),
                                     qonnx=qat == "brevitas")
                if qat == "brevitas":
                    graph, source = graph
                rel = "{}/{}.onnx".format(folder, gid)
                onnx.save_model(graph, os.path.join(tmp, folder, gid + ".onnx"))
                files.append(rel)
                # MACs at the example's batch (every shape concrete), per sample; the nodes
                # that could not be counted are recorded, never taken as 0 silently.
                macs = count_macs(graph, {n: t.numpy() for n, t in zip(ins, args)})
                entry = {"id": gid, "file": rel, "format": "onnx", "inputs": ins, "outputs": outs,
                         "macs": macs.total, "macs_uncounted": macs.uncounted}
                peak_bytes = max(peak_bytes, activation_bytes(graph))
                if qat:
                    entry["precision"] = "int8"
                    exported[gid] = graph
                if qat == "brevitas":
                    # The QONNX graph (arbitrary bit widths) travels with the bundle for the
                    # FPGA path; ONNX Runtime runs its QCDQ form.
                    entry["qonnx"] = {"file": "{}/{}.qonnx.onnx".format(folder, gid),
                                      "bit_widths": quant_bit_widths(source)}
                    onnx.save_model(source, os.path.join(tmp, folder, gid + ".qonnx.onnx"))
                    files.append(entry["qonnx"]["file"])
                if folder == "stages":
                    entry["output_shapes"] = [[None] + list(s[1:]) for s in structure.state_shapes[k]]
                else:
                    last = k == n_exits - 1
                    entry.update({"output_shapes": [[None, structure.num_classes]], "after_stage": k, "policy": pol.name,
                                  "threshold": None if last else thr,
                                  "chosen_from": {"method": "final exit" if last else
                                                  ("user" if thr is not None else "uncalibrated")}})
                entries.append(entry)
                bar.update(note=gid)
            state = nxt
    if qat:
        validate_qat_graphs(exported)
    ref_rel = "reference/reference.npz"
    arrays = {"input": reference.numpy()}
    arrays.update({"exit_{}".format(k): l for k, l in enumerate(ref_logits)})
    np.savez(os.path.join(tmp, "reference", "reference.npz"), **arrays)
    files.append(ref_rel)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "sdk_version": edgesdk.__version__,
        "name": name,
        "created": utc_now(),
        "target": tgt.name,
        "built_with": dict(_versions(), opset=opset, exporter="torch.onnx (TorchScript, dynamo=False)"),
        "inputs": [{"name": INPUT_NAME, "dtype": "float32", "shape": [None] + list(example.shape[1:]),
                    "preprocessing": preprocessing, "statistics": input_stats}],
        "num_classes": structure.num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "stages": stage_entries,
        "exits": exit_entries,
        "quantization": None,
        "pruning": pruning,
        "provenance": {
            "source": "pytorch", "class": type(model).__name__,
            "source_sha256": _model_sha256(model),
            "passes": [{"name": "onnx-export", "opset": opset, "dynamic_batch": True},
                       {"name": "onnx-checker", "full_check": True},
                       {"name": "onnxruntime-verify", "atol": atol, "rtol": rtol,
                        "samples": int(reference.shape[0])}],
        },
        "reference": {"file": ref_rel, "atol": atol, "rtol": rtol},
        # What the runtime checks before loading and before each batch (runtime/memory.py).
        "memory": {"device_bytes": tgt.memory_mb * MIB if tgt.memory_mb else None,
                   "activation_bytes_per_sample": peak_bytes},
        "files": bundle_io.hash_files(tmp, files),
    }
    bundle_io.write_manifest(tmp, manifest)
    return ConversionReport(path=output, max_abs_error=[],
                            stage_macs=[e["macs"] for e in stage_entries],
                            exit_macs=[e["macs"] for e in exit_entries],
                            macs_uncounted={e["id"]: e["macs_uncounted"]
                                            for e in stage_entries + exit_entries
                                            if e["macs_uncounted"]},
                            files=manifest["files"])
