"""Vitis HLS synthesis reports of a bundle's HLS projects read back into its build records,
beside edgesdk's estimates: what a user gets after running Vitis on the projects edgesdk
wrote (``tar -xzf BUNDLE/fpga/BOARD/GRAPH.hls.tar.gz -C DIR``, then C synthesis in each).
The reports are read with hls4ml's own parser (``hls4ml report``)."""
import os

from edgesdk.converters.draft import edit_bundle
from edgesdk.converters.hls4ml.driver import hls4ml_module, silently
from edgesdk.converters.hls4ml.graph import project_name
from edgesdk.errors import InputError
from edgesdk.manifest import graph_entries

# hls4ml's report keys -> the build record's.
RESOURCES = {"DSP": "dsp", "LUT": "lut", "FF": "ff", "BRAM_18K": "bram_18k"}
LATENCY = {"BestLatency": "latency_cycles_best", "WorstLatency": "latency_cycles_worst",
           "IntervalMin": "interval_cycles_min", "IntervalMax": "interval_cycles_max"}


def _number(report, key, where):
    try:
        return float(report[key])
    except (KeyError, TypeError, ValueError):
        raise InputError("{}: the C-synthesis report has no number for {}".format(where, key))


def synthesis_record(report, estimate, where):
    """The record of one graph's C-synthesis report (hls4ml's ``CSynthesisReport`` dict):
    resources, latency in cycles, target and estimated clock (ns), and each resource as a
    ratio to edgesdk's estimate."""
    rec = {"tool": "Vitis HLS C synthesis (read by hls4ml's report parser)"}
    for key, name in list(RESOURCES.items()) + list(LATENCY.items()):
        rec[name] = int(_number(report, key, where))
    rec["clock_ns_target"] = _number(report, "TargetClockPeriod", where)
    rec["clock_ns_estimated"] = _number(report, "EstimatedClockPeriod", where)
    rec["latency_ms_worst"] = rec["latency_cycles_worst"] * rec["clock_ns_estimated"] / 1e6
    rec["vs_estimate"] = {name: rec[name] / float(estimate[name])
                          for name in RESOURCES.values() if estimate.get(name)}
    return rec


def read_synthesis_reports(bundle_path, target, folder):
    """Read each graph's C-synthesis report from ``folder/NAME/`` (the graph's HLS project,
    extracted, after C synthesis) into its ``fpga-csim`` build for ``target`` as
    ``hls.synthesis``; returns ``{graph id: record}``. Every graph needs its report."""
    hls4ml_module()
    from hls4ml.report import parse_vivado_report
    out = {}
    with edit_bundle(bundle_path) as draft:
        for entry in graph_entries(draft.manifest):
            csim = [b for b in entry.get("builds") or [] if b["format"] == "fpga-csim"
                    and b.get("device") == target]
            if not csim:
                raise InputError("graph '{}' has no C-simulation build for {}: run edgesdk "
                                 "build --toolchain hls4ml first".format(entry["id"], target))
            project = os.path.join(folder, project_name(entry["id"]))
            if not os.path.isfile(os.path.join(project, "project.tcl")):
                raise InputError("{} is not the extracted HLS project of {} (tar -xzf "
                                 "BUNDLE/{} -C {})".format(project, entry["id"],
                                                           csim[0]["hls"]["project"], folder))
            report = (silently(parse_vivado_report, project) or {}).get("CSynthesisReport")
            if not report:
                raise InputError("{} has no C-synthesis report: run Vitis HLS's C synthesis "
                                 "there (vitis_hls -f build_prj.tcl)".format(project))
            out[entry["id"]] = csim[0]["hls"]["synthesis"] = synthesis_record(
                report, csim[0].get("estimate") or {}, project)
        draft.manifest["provenance"]["passes"].append(
            {"name": "hls-synthesis-reports", "device": target})
    return out
