"""The first conversion pass: every stage and exit head exported to ONNX into a draft, with
the manifest that describes them (shapes, MACs, exits, provenance, reference outputs)."""
import datetime
import hashlib
import os
import platform
from dataclasses import dataclass, field

import numpy as np

import edgesdk
from edgesdk.deps import require
from edgesdk.errors import ModelStructureError
from edgesdk.manifest import SCHEMA_VERSION
from edgesdk.progress import Progress
from edgesdk.converters.gated import export_gated, gated_blocks
from edgesdk.converters.macs import count_macs
from edgesdk.runtime.activation_memory import graph_activation_bytes
from edgesdk.converters.model import as_state
from edgesdk.converters.onnx_export import export_graph
from edgesdk.converters.qat import quant_bit_widths, validate_qat_graphs

INPUT_NAME = "x"
MIB = 1 << 20
REFERENCE_FILE = "reference/reference.npz"


@dataclass
class Source:
    """The PyTorch side of a conversion, prepared by :func:`~.convert.convert`."""

    model: object            # the (dense, eval-mode) nn.Module
    stages: list
    heads: list
    structure: object        # :func:`~.model.trace_structure`'s result
    example: object          # torch tensor fixing the input shape
    reference: object        # torch tensor the outputs are checked and stored on
    ref_logits: list         # PyTorch's logits per exit on ``reference``
    qat: str = None          # quantization-aware training kind, if any
    # stage id -> export_gated for that stage with some gates dropped (filled by the export)
    regate: dict = field(default_factory=dict)


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_names(k, n):
    """Names of the ``n`` state tensors stage ``k`` writes (``k = -1``: the model input)."""
    return [INPUT_NAME] if k < 0 else ["s{}_{}".format(k, i) for i in range(n)]


def model_sha256(model):
    """A hash of the parameters and buffers (names, shapes, bytes): provenance without pickles."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(list(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tool_versions():
    out = {"edgesdk": edgesdk.__version__, "python": platform.python_version(),
           "machine": platform.machine()}
    for mod, extra in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnx")):
        out[mod] = require(mod, extra, "convert models").__version__
    return out


def _graph_entries(draft, src, opts, policy, threshold):
    """Export every stage and head into the draft; ``(stage entries, exit entries, peak
    activation bytes, warnings)``."""
    onnx = require("onnx", "onnx", "write ONNX stages")
    torch = require("torch", "torch", "export stages to ONNX")
    n_exits = len(src.stages)
    stage_entries, exit_entries, files, exported = [], [], [], {}
    peak_bytes = 0
    warnings = []
    state = (src.example,)
    with Progress(2 * n_exits, "exporting", enabled=opts.progress) as bar:
        for k, (stage, head) in enumerate(zip(src.stages, src.heads)):
            in_names = state_names(k - 1, len(state))
            with torch.no_grad():
                nxt = as_state(stage(*state))
            out_names = state_names(k, len(nxt))
            def skipped(names, k=k, head=head):
                # A head may leave out state tensors that only the next stage reads (which
                # must read all of its inputs); the last head has no next stage.
                if not getattr(head, "picks", False):
                    warnings.append("exit head {} does not read {} of stage {}'s outputs; "
                                    "only stage {} does".format(k, ", ".join(names), k, k + 1))
            for gid, folder, module, args, ins, outs, entries in (
                    ("stage{}".format(k), "stages", stage, state, in_names, out_names, stage_entries),
                    ("exit{}".format(k), "heads", head, nxt, out_names, ["logits"], exit_entries)):
                graph = export_graph(module, args, ins, outs, opts.opset,
                                     "{} {} ({})".format(folder[:-1], k, type(module).__name__),
                                     qonnx=src.qat == "brevitas",
                                     on_unused=skipped if folder == "heads" and k + 1 < n_exits
                                     else None)
                if src.qat == "brevitas":
                    graph, source = graph
                rel = "{}/{}.onnx".format(folder, gid)
                onnx.save_model(graph, draft.path(rel))
                files.append(rel)
                # MACs at the example's batch (every shape concrete), per sample; the nodes
                # that could not be counted are recorded, never taken as 0 silently.
                macs = count_macs(graph, {n: t.numpy() for n, t in zip(ins, args)})
                entry = {"id": gid, "file": rel, "format": "onnx", "inputs": ins, "outputs": outs,
                         "macs": macs.total, "macs_uncounted": macs.uncounted}
                peak_bytes = max(peak_bytes, graph_activation_bytes(graph.SerializeToString()))
                if src.qat:
                    entry["precision"] = "int8"
                    exported[gid] = graph
                if src.qat == "brevitas":
                    # The QONNX graph (arbitrary bit widths) travels with the bundle for the
                    # FPGA path; ONNX Runtime runs its QCDQ form.
                    entry["qonnx"] = {"file": "{}/{}.qonnx.onnx".format(folder, gid),
                                      "bit_widths": quant_bit_widths(source)}
                    onnx.save_model(source, draft.path(entry["qonnx"]["file"]))
                    files.append(entry["qonnx"]["file"])
                if folder == "stages":
                    entry["output_shapes"] = [[None] + list(s[1:])
                                              for s in src.structure.state_shapes[k]]
                    if getattr(module, "edgesdk_spatial", False):
                        entry["spatial"] = export_spatial(draft, module, args, ins, gid,
                                                          opts.opset)
                        files += [entry["spatial"]["masker"]["file"],
                                  entry["spatial"]["patch"]["file"]]
                    if gated_blocks(module):
                        src.regate[gid] = _regate(draft, module, args, ins, outs, gid)
                        entry["gated"], written = src.regate[gid](())
                        files += written
                else:
                    last = k == n_exits - 1
                    entry.update({"output_shapes": [[None, src.structure.num_classes]],
                                  "after_stage": k, "policy": policy.name,
                                  "threshold": None if last else threshold,
                                  "chosen_from": {"method": "final exit" if last else
                                                  ("user" if threshold is not None else
                                                   "uncalibrated")}})
                entries.append(entry)
                bar.update(note=gid)
            state = nxt
    if src.qat:
        validate_qat_graphs(exported)
    draft.add_files(files)
    return stage_entries, exit_entries, peak_bytes, warnings


def _regate(draft, stage, args, inputs, outputs, gid):
    """``f(ungated)``: the gated stage's pieces written into the draft with the gated blocks
    numbered in ``ungated`` computed by every sample (see :func:`~.gated.export_gated`)."""
    onnx = require("onnx", "onnx", "write ONNX stages")

    def macs_of(rel, feeds):
        return count_macs(onnx.load(draft.path(rel)), feeds).total
    return lambda ungated: export_gated(draft, stage, args, inputs, outputs, gid, macs_of,
                                        ungated)


def export_spatial(draft, block, args, inputs, gid, opset):
    """The masker and patch graphs of the masked block ``block`` (stage ``gid``, example
    input ``args``) written into the draft; returns the stage's ``spatial`` record."""
    import torch
    from edgesdk.converters.spatial import needs_validity, patch_branch
    from edgesdk.runtime.spatial import gather
    onnx = require("onnx", "onnx", "write ONNX stages")
    if len(args) != 1:
        raise ModelStructureError("a masked block takes one tensor, stage {} gets {}".format(
            gid, len(args)))
    x = args[0].numpy()
    g = block.granularity
    keep = np.ones((len(x), x.shape[2] // g, x.shape[3] // g), dtype=bool)
    tiles, valid, _ = gather(x, keep, g, block.halo, with_valid=needs_validity(block.branch))
    patch_in = [torch.from_numpy(tiles)] + ([] if valid is None else [torch.from_numpy(valid)])
    record = {"granularity": g, "halo": block.halo, "threshold": block.threshold}
    for key, module, example, ins, outs in (
            ("masker", block.masker, list(args), inputs, ["mask_logits"]),
            ("patch", patch_branch(block), patch_in, ["patches", "valid"][:len(patch_in)],
             ["block"])):
        rel = "stages/{}.{}.onnx".format(gid, key)
        graph = export_graph(module, example, ins, outs, opset,
                             "the {} of stage {}".format(key, gid),
                             dynamic={n: {3: "W"} for n in ins} if key == "patch" else None)
        onnx.save_model(graph, draft.path(rel))
        record[key] = {"file": rel, "inputs": ins, "outputs": outs}
    return record


def export_stages(draft, src, opts, target, policy, threshold, input_stats):
    """Fill the empty ``draft`` with the ONNX graphs of ``src`` and their manifest; returns
    warnings about the model's structure."""
    for folder in ("stages", "heads", "reference"):
        os.makedirs(draft.path(folder))
    draft.manifest = {"files": {}}
    stage_entries, exit_entries, peak_bytes, warnings = _graph_entries(draft, src, opts, policy,
                                                                       threshold)
    arrays = {"input": src.reference.numpy()}
    arrays.update({"exit_{}".format(k): l for k, l in enumerate(src.ref_logits)})
    np.savez(draft.path(REFERENCE_FILE), **arrays)
    draft.add_files([REFERENCE_FILE])
    example = src.example
    draft.manifest.update({
        "schema_version": SCHEMA_VERSION,
        "sdk_version": edgesdk.__version__,
        "name": opts.name,
        "created": utc_now(),
        "target": target.name,
        "built_with": dict(tool_versions(), opset=opts.opset,
                           exporter="torch.onnx (TorchScript, dynamo=False)"),
        "inputs": [{"name": INPUT_NAME, "dtype": "float32", "shape": [None] + list(example.shape[1:]),
                    "preprocessing": opts.preprocessing, "statistics": input_stats}],
        "num_classes": src.structure.num_classes,
        "class_names": list(opts.class_names) if opts.class_names is not None else None,
        "stages": stage_entries,
        "exits": exit_entries,
        "quantization": None,
        "pruning": opts.pruning,
        "provenance": {
            "source": "pytorch", "class": type(src.model).__name__,
            "source_sha256": model_sha256(src.model),
            "passes": [{"name": "onnx-export", "opset": opts.opset, "dynamic_batch": True},
                       {"name": "onnx-checker", "full_check": True},
                       {"name": "onnxruntime-verify", "atol": opts.atol, "rtol": opts.rtol,
                        "samples": int(src.reference.shape[0])}],
        },
        "reference": {"file": REFERENCE_FILE, "atol": opts.atol, "rtol": opts.rtol},
        # What the runtime checks before loading and before each batch (runtime/memory.py).
        "memory": {"device_bytes": target.memory_mb * MIB if target.memory_mb else None,
                   "activation_bytes_per_sample": peak_bytes},
    })
    return warnings
