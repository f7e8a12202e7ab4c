"""PyTorch multi-exit model -> verified bundle (one ONNX graph per stage and per exit head).

Conversion runs as passes over one in-memory :class:`~.draft.BundleDraft`: export
(:mod:`.stage_export`), verification against PyTorch, reduced-precision builds and their
agreement (:mod:`.builds`), choices from a profile (:mod:`.selection`), the precision
selection and the per-exit table (:mod:`.precision`); ``manifest.json`` is written once at
the end and every file checked against its hash before the bundle appears at its path.
"""
import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.deps import require
from edgesdk.errors import ConversionError, InputError
from edgesdk.converters.draft import open_draft
from edgesdk.converters.gated import dense_gates
from edgesdk.converters.model import chain, fold_previous_logits, split_model, trace_structure
from edgesdk.converters.onnx_export import DEFAULT_OPSET
from edgesdk.converters.precision import PrecisionPlan, check_calibration, plan_precisions
from edgesdk.converters.qat import QAT_ATOL, QAT_RTOL, frozen_copy, quantization_aware_kind
from edgesdk.converters.pruning import make_dense, sparsity_report
from edgesdk.converters.selection import DEFAULT_EXIT_ACCURACY_DROP, DEFAULT_MIN_AGREEMENT
from edgesdk.converters.stage_export import Source, export_stages
from edgesdk.manifest import graph_entries, precision_of
from edgesdk.runtime.input_stats import summarize
from edgesdk.runtime.reference import REDUCED_PRECISION_ATOL, REDUCED_PRECISION_RTOL
from edgesdk.targets import get_target

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


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
    warnings: list = field(default_factory=list)        # about the model's structure
    macs_uncounted: dict = field(default_factory=dict)  # graph id -> nodes left out of its MACs
    input_statistics: dict = None                       # per channel, after preprocessing


@dataclass
class ConvertOptions:
    """How :func:`convert` converts; every field has a default.

    Model: ``stages_attr``/``heads_attr`` name the two ``nn.ModuleList`` attributes.
    Graphs: ``target`` (a board name), ``opset``. Exits: ``policy``, ``threshold`` (every
    early exit's; None: off until calibrated). Input: ``preprocessing`` (``{"scale", "mean",
    "std"}``), ``reference_input`` (default: the example) checked within ``|ort - torch| <=
    atol + rtol * |torch|`` and stored for ``edgesdk validate --check``. Bundle: ``name``
    (default: from the path), ``class_names``, ``force`` (replace an existing one),
    ``threads``, ``progress``.

    Precision: ``precisions`` (builds beside FP32, among the target's: ``int8``, QDQ with
    activation ranges from ``calibration_data`` by ``calibration_method``; ``fp16``),
    ``quantize`` (the precision every graph runs; default the target's, see
    :mod:`edgesdk.converters.precision`), ``calibration_data`` (real preprocessed inputs, or
    ``(x, y)`` with integer labels: extra builds record their top-1 agreement with FP32 on it
    and the report's ``exit_table`` compares accuracy per exit), ``exit_aware`` (calibrate
    INT8 stage k only on the samples that reach it under ``threshold``).
    Profile: ``profile`` (a store with this very bundle's graphs measured on the board:
    each graph's build and the exits worth keeping are then chosen from the measured
    ``profile_metric`` at ``profile_batch``, on ``device`` if the store holds several, keeping
    ``min_agreement`` and ``exit_accuracy_drop``; see :mod:`edgesdk.converters.selection`).
    ``pruning``: records of how the model was pruned (:func:`~.pruning.prune_channels`);
    ``torch.nn.utils.prune`` masks are folded into dense weights and their sparsity recorded.
    """

    stages_attr: str = "stages"
    heads_attr: str = "heads"
    target: str = "host"
    opset: int = DEFAULT_OPSET
    policy: str = "max-softmax"
    threshold: object = None
    preprocessing: dict = None
    reference_input: object = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    name: str = None
    class_names: list = None
    force: bool = False
    threads: int = None
    progress: bool = True
    precisions: list = None
    quantize: str = None
    calibration_data: object = None
    calibration_method: str = "minmax"
    profile: str = None
    device: str = None
    profile_metric: str = "mean_ms"
    profile_batch: int = 1
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    exit_accuracy_drop: float = DEFAULT_EXIT_ACCURACY_DROP
    pruning: list = None
    exit_aware: bool = False


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


def convert(model, example_input, output, options=None, **overrides):
    """Convert a PyTorch multi-exit model into a verified bundle directory at ``output``.

    ``model``: a :func:`MultiExitModel` or any ``nn.Module`` with its stages and heads in two
    ``nn.ModuleList`` attributes whose forward returns the list of exit logits.
    ``example_input``: a batch ``(N, ...)`` fixing the input shape (the batch dimension stays
    dynamic). ``options``: a :class:`ConvertOptions`; keyword arguments set (or override) its
    fields, e.g. ``convert(m, x, "m.edgebundle", precisions=["int8"], calibration_data=(x, y))``.

    Written to a temporary directory and renamed: a failure leaves nothing behind.
    """
    opts = dataclasses.replace(options or ConvertOptions(), **overrides)
    torch = require("torch", "torch", "convert PyTorch models")
    require("onnxruntime", "onnx", "verify converted stages")
    from edgesdk.runtime.policies import get_policy
    tgt = get_target(opts.target)
    if "onnx" not in tgt.formats:
        raise InputError("target '{}' takes {} builds; this converter writes onnx".format(
            opts.target, ", ".join(tgt.formats)))
    if not 7 <= int(opts.opset) <= 20:
        raise InputError("opset {} is outside 7..20, what the TorchScript exporter writes".format(
            opts.opset))
    if tgt.max_opset is not None and opts.opset > tgt.max_opset:
        raise InputError("target '{}' reads ONNX opset <= {}; got --opset {}".format(
            opts.target, tgt.max_opset, opts.opset))
    qat = quantization_aware_kind(model)
    if qat:
        if opts.quantize is not None or opts.precisions or opts.profile:
            raise InputError("this model is already quantized (quantization-aware training: "
                             "{} layers) and converts as INT8 as it is; quantizing it again "
                             "would quantize twice: drop quantize/precisions/profile".format(
                                 "Brevitas" if qat == "brevitas" else "fake-quantize"))
        model = frozen_copy(model)
        plan = PrecisionPlan(["int8"], "int8", tgt.precision_rules(), source=(
            "quantization-aware training (Brevitas: QONNX, run as QCDQ)" if qat == "brevitas"
            else "quantization-aware training (Q/DQ from fake quantization)"))
        opts = dataclasses.replace(opts, atol=max(opts.atol, QAT_ATOL), rtol=max(opts.rtol, QAT_RTOL))
        calib_x, calib_y = None, None
    else:
        plan = plan_precisions(tgt, opts.precisions, opts.quantize,
                               opts.calibration_data is not None, opts.profile)
        calib_x, calib_y = check_calibration(opts.calibration_data, plan, opts.profile)
    pruning = list(opts.pruning or [])
    model, had_masks = make_dense(model)
    if had_masks:
        pruning.append(sparsity_report(model))
    stages, heads = fold_previous_logits(*split_model(model, opts.stages_attr, opts.heads_attr))
    pol = get_policy(opts.policy)
    example = _as_tensor(example_input, "example_input")
    reference = example if opts.reference_input is None else \
        _as_tensor(opts.reference_input, "reference_input")
    if reference.shape[1:] != example.shape[1:]:
        raise InputError("reference_input shape {} differs from example_input {}".format(
            list(reference.shape), list(example.shape)))
    if calib_x is not None and calib_x.shape[1:] != example.shape[1:]:
        raise InputError("calibration data shape {} differs from example_input {}".format(
            list(calib_x.shape), list(example.shape)))
    output = os.path.abspath(output)
    if not output.endswith(bundle_io.SUFFIX):
        raise InputError("bundle paths end in '{}': got '{}'".format(bundle_io.SUFFIX, output))
    opts = dataclasses.replace(opts, pruning=pruning,
                               name=opts.name or os.path.basename(output)[:-len(bundle_io.SUFFIX)])

    was_training = model.training
    model.eval()
    # The stage graphs and reference outputs are of the ungated network; gated blocks are
    # exported as pieces beside them (converters/gated.py).
    with dense_gates(model):
        try:
            # Trace with at least 2 samples so a tensor that lost its batch dimension shows up.
            trace_input = example if example.shape[0] > 1 else torch.cat([example, example])
            structure = trace_structure(model, stages, heads, trace_input)
            thr = pol.check_threshold(opts.threshold, structure.num_classes, "threshold")
            if opts.class_names is not None and len(opts.class_names) != structure.num_classes:
                raise InputError("{} class names given, the heads have {} classes".format(
                    len(opts.class_names), structure.num_classes))
            with torch.no_grad():
                ref_logits = [t.numpy() for t in chain(stages, heads, (reference,))]
            src = Source(model, stages, heads, structure, example, reference, ref_logits, qat)
            # What inputs looked like (after preprocessing): the runtime warns on batches far
            # outside it (raw pixels taken as model input).
            stats = summarize(calib_x, "the calibration data") if calib_x is not None else \
                summarize(example.numpy(), "the example input")
            with open_draft(output, force=opts.force, threads=opts.threads) as draft:
                structure_warnings = export_stages(draft, src, opts, tgt, pol, thr, stats)
                m = draft.manifest
                report = ConversionReport(
                    path=output, max_abs_error=[], warnings=structure_warnings,
                    stage_macs=[e["macs"] for e in m["stages"]],
                    exit_macs=[e["macs"] for e in m["exits"]], input_statistics=stats,
                    macs_uncounted={e["id"]: e["macs_uncounted"] for e in graph_entries(m)
                                    if e["macs_uncounted"]})
                report.max_abs_error = _verify(draft.model(), reference.numpy(), ref_logits,
                                               opts.atol, opts.rtol)
                # Agreement of FP16 builds is checked on the reference inputs when no calibration
                # data was given (FP16 needs none to build).
                _extra_builds(draft, report, plan, tgt,
                              calib_x if calib_x is not None else reference.numpy(), calib_y, opts,
                              src.regate)
                report.files = draft.manifest["files"]
        finally:
            model.train(was_training)
    return report


def _extra_builds(draft, report, plan, target, x, y, opts, regate):
    """Reduced-precision builds, their agreement with FP32, the selection (the plan's, or the
    profile's per graph; ``regate`` re-exports gated stages whose gates it drops) and the
    per-exit table on the calibration data."""
    from edgesdk.converters.builds import add_builds, record_agreement, record_providers
    from edgesdk.converters.precision import check_int8_rules, exit_agreement_table, select_precision
    baseline = None
    if len(plan.precisions) > 1:
        add_builds(draft, plan.precisions, x, opts.calibration_method,
                   symmetric=target.int8_activations == "int8-symmetric", exit_aware=opts.exit_aware)
        check_int8_rules(draft, target)
        baseline = record_agreement(draft, x)
        m = draft.manifest
        report.builds = {e["id"]: {b["precision"]: b.get("top1_agreement", 1.0) for b in e["builds"]}
                         for e in graph_entries(m)}
        plan.warnings += disagreeing_builds(m, opts.min_agreement)
    if opts.profile is not None:
        from edgesdk.converters.selection import apply_profile
        report.choices = apply_profile(draft, opts.profile, x, y, opts.device, opts.profile_metric,
                                       opts.profile_batch, opts.min_agreement,
                                       opts.exit_accuracy_drop, baseline, regate)
        plan.warnings += report.choices["slower_than_fp32"]
    select_precision(draft, plan, per_graph=opts.profile is not None)
    record_providers(draft, target)
    report.precision_warnings = plan.warnings
    if x is not None and len(plan.precisions) > 1:
        report.exit_table = exit_agreement_table(draft, x, y)
        draft.manifest["quantization"].update(exit_table=report.exit_table,
                                              exit_table_samples=int(len(x)))
    _refresh_reference(draft)


def disagreeing_builds(manifest, min_agreement):
    """A warning for each reduced-precision build whose top-1 agreement with FP32 is below
    ``min_agreement`` at some exit, naming the graph and that exit."""
    out = []
    for e in graph_entries(manifest):
        for b in e.get("builds") or []:
            share = b.get("top1_agreement")
            if share is None or share >= min_agreement:
                continue
            # Agreement is measured against the selected build: with INT8 selected, the FP32
            # build's figure is the INT8 one's.
            reduced = precision_of(b) if precision_of(b) != "fp32" else precision_of(e)
            out.append("the {} build of {} agrees with fp32 on the top-1 class of only {:.1%} "
                       "of {} calibration samples at exit {} (--min-agreement {:.1%}): it "
                       "changes answers; keep fp32 for {} or calibrate with more data".format(
                           reduced, e["id"], share, b["agreement_samples"], b["worst_exit"],
                           min_agreement, e["id"]))
    return out


def _refresh_reference(draft):
    """Reference outputs of the selected builds (``validate --check`` compares against them).

    INT8 kernels may round differently on another instruction set; their tolerance is wider.
    """
    manifest = draft.manifest
    if all(precision_of(e) == "fp32" for e in graph_entries(manifest)):
        return
    ref = manifest["reference"]
    with np.load(draft.path(ref["file"]), allow_pickle=False) as data:
        arrays = {"input": data["input"]}
    logits = draft.model().exit_logits(arrays["input"], adaptive=False)
    arrays.update({"exit_{}".format(k): l for k, l in enumerate(logits)})
    np.savez(draft.path(ref["file"]), **arrays)
    draft.add_files([ref["file"]])
    ref.update(atol=REDUCED_PRECISION_ATOL, rtol=REDUCED_PRECISION_RTOL,
               note="outputs of the selected builds (not PyTorch's): some are reduced precision")


def _verify(model, x, expected, atol, rtol):
    from edgesdk.runtime.reference import compare_exits
    errors, bad = compare_exits(model.exit_logits(x, adaptive=False), expected, atol, rtol)
    if bad:
        raise ConversionError(
            "ONNX Runtime disagrees with PyTorch at exit(s) {}: max abs error per exit {} exceeds "
            "atol={} + rtol={} * |logit|. Nothing was written.".format(
                bad, ["{:.3g}".format(e) for e in errors], atol, rtol))
    return errors
