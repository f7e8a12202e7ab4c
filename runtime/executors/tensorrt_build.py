"""Build a bundle's TensorRT engines on the device that will run them.

TensorRT plans are specific to the GPU and the TensorRT version that built them, so they are
made where they run: on the Jetson (JetPack's TensorRT 8.2 and Python 3.6, without the host
SDK: ``python3 edgesdk-runtime.pyz build-engines BUNDLE``) or on a GPU host
(``edgesdk build BUNDLE --toolchain tensorrt --on-device``). The plan comes from the bundle
(``manifest["tensorrt"]``, written by the host's ``edgesdk build --toolchain tensorrt``):
which ONNX file each graph parses, its precision and its optimization profile.

Each graph: parse the ONNX file, set the precision flags (FP16; INT8 for Q/DQ graphs, with
FP16 for the layers left in float), add the optimization profile, build, serialize. The
engines are registered in the manifest as builds (format ``tensorrt``) with ``built_with``:
TensorRT version, GPU name, compute capability, CUDA version, and the L4T/JetPack release on
a Jetson. The executor refuses an engine whose record does not match the device.
Python 3.6 compatible.
"""
import os
import platform
import subprocess
import time

from edgesdk import atomic
from edgesdk import bundle as bundle_io
from edgesdk.errors import BuildError, BundleError, InputError
from edgesdk.manifest import graph_entries, precision_of, put_build
from edgesdk.progress import Progress
from edgesdk.runtime.cuda_memory import cuda
from edgesdk.runtime.executors.tensorrt import tensorrt, trt_runtime

DEFAULT_WORKSPACE_MB = 1024


def tensorrt_plan(manifest):
    """The bundle's TensorRT plan, checked enough to build from."""
    plan = manifest.get("tensorrt")
    if not isinstance(plan, dict) or not isinstance(plan.get("graphs"), dict):
        raise BundleError("the bundle has no TensorRT plan; on the host run: edgesdk build "
                          "BUNDLE --toolchain tensorrt --target jetson-tx2 (or x86-nvidia)")
    missing = [e["id"] for e in graph_entries(manifest) if e["id"] not in plan["graphs"]]
    if missing:
        raise BundleError("the TensorRT plan has no entry for {}; prepare the bundle again"
                          .format(", ".join(missing)))
    return plan


def jetson_release():
    """``{"l4t": "R32.7.1", "jetpack": "4.6.1-b110"}`` on a Jetson, {} elsewhere."""
    out = {}
    try:
        with open("/etc/nv_tegra_release") as f:
            head = f.readline()  # "# R32 (release), REVISION: 7.1, GCID: ..."
        major = head.split("(release)")[0].replace("#", "").strip()
        revision = head.split("REVISION:")[1].split(",")[0].strip()
        out["l4t"] = "{}.{}".format(major, revision)
    except (OSError, IndexError):
        return out
    try:
        version = subprocess.check_output(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"],
                                          stderr=subprocess.DEVNULL, universal_newlines=True)
        out["jetpack"] = version.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def built_with(trt):
    """What an engine built here depends on (checked again when it is loaded)."""
    info = {"tensorrt": trt.__version__}
    info.update(cuda().device())
    info.update(jetson_release())
    return info


def build_engine(trt, logger, onnx_path, precision, profile, workspace_mb=DEFAULT_WORKSPACE_MB):
    """The serialized engine (bytes) of one ONNX graph with TensorRT's Python API."""
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(explicit)  # 8.x parses ONNX only into explicit-batch networks
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            raise BuildError("TensorRT {} cannot parse '{}':\n  {}".format(
                trt.__version__, onnx_path, "\n  ".join(
                    str(parser.get_error(i)) for i in range(parser.num_errors))))
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(profile):
        raise BuildError("'{}' has inputs {}; the plan's profile covers {}".format(
            onnx_path, names, sorted(profile)))
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # TensorRT 8.2
        config.max_workspace_size = workspace_mb << 20
    # INT8: explicit quantization from the graph's Q/DQ nodes, FP16 for the layers between.
    for name in {"fp16": ["FP16"], "int8": ["FP16", "INT8"]}.get(precision, []):
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:  # TensorRT for RTX: strongly typed networks only
            raise BuildError("TensorRT {} has no {} builder flag; build {} engines with a "
                             "TensorRT that has it, or fp32".format(trt.__version__, name,
                                                                    precision))
        config.set_flag(flag)
    shapes = builder.create_optimization_profile()
    for name, p in profile.items():
        shapes.set_shape(name, p["min"], p["opt"], p["max"])
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError("TensorRT {} could not build an engine from '{}' (its log above says "
                         "why)".format(trt.__version__, onnx_path))
    return bytes(plan)


def build_engines(bundle_path, workspace_mb=None, progress=True):
    """Build every engine of the bundle's TensorRT plan here and register them as builds
    (replacing engines of the same device and precision), with ``workspace_mb`` MiB of
    builder workspace each (default: the plan's, as its ``trtexec`` lines say). The bundle is
    rewritten in a staging copy: a failure leaves it as it was. Returns the new build
    records."""
    trt = tensorrt("build TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)

    def build(plan, g, tmp):
        return build_engine(trt, logger, os.path.join(tmp, *g["onnx"].split("/")),
                            g["precision"], g["profile"],
                            workspace_mb or plan.get("workspace_mb") or DEFAULT_WORKSPACE_MB)
    return _add_engines(bundle_path, trt, build, "tensorrt-build", progress)


def register_engines(bundle_path, folder, progress=True):
    """Register engines built by hand (``sh BUNDLE/tensorrt/trtexec.sh``, or trtexec with the
    plan's lines) as the bundle's TensorRT builds, as :func:`build_engines` registers its
    own: each graph's engine is ``folder/<the plan's engine file name>`` (e.g.
    ``stage0.fp16.engine``), checked to deserialize with this device's TensorRT, copied into
    the bundle, hashed, and recorded as built with this device's TensorRT and GPU (an engine
    runs only there). Returns the build records."""
    trt = tensorrt("register TensorRT engines")

    def read(plan, g, tmp):
        path = os.path.join(folder, os.path.basename(g["engine"]))
        if not os.path.isfile(path):
            raise InputError("no engine '{}' in {}: build it with the plan's trtexec line "
                             "({})".format(os.path.basename(g["engine"]), folder, g["trtexec"]))
        with open(path, "rb") as f:
            data = f.read()
        if trt_runtime(trt).deserialize_cuda_engine(data) is None:
            raise BundleError("'{}' is not an engine TensorRT {} on this device can load; "
                              "build it here with the plan's trtexec line".format(
                                  path, trt.__version__))
        return data
    return _add_engines(bundle_path, trt, read, "tensorrt-register", progress)


def _add_engines(bundle_path, trt, produce, pass_name, progress):
    """Write ``produce(plan, graph plan, staging dir)``'s engine bytes for every graph of the
    plan into a staging copy of the bundle and register them as builds."""
    with atomic.writer_lock(bundle_path):  # from the read on: no other writer starts from it
        bundle = bundle_io.read_bundle(bundle_path)
        plan = tensorrt_plan(bundle.manifest)
        info = built_with(trt)
        entries = graph_entries(bundle.manifest)
        records = {}
        with bundle_io.rewrite_bundle(bundle) as tmp:
            with Progress(len(entries), "tensorrt " + plan["device"], enabled=progress) as bar:
                for entry in entries:
                    g = plan["graphs"][entry["id"]]
                    t0 = time.time()
                    data = produce(plan, g, tmp)
                    path = os.path.join(tmp, *g["engine"].split("/"))
                    if not os.path.isdir(os.path.dirname(path)):
                        os.makedirs(os.path.dirname(path))
                    with open(path, "wb") as f:
                        f.write(data)
                    records[entry["id"]] = {
                        "file": g["engine"], "format": "tensorrt", "precision": g["precision"],
                        "device": plan["device"], "arch": platform.machine(), "processor": "gpu",
                        "artifact": "engine", "batch": None, "profile": g["profile"],
                        "source": g["onnx"], "built_with": info,
                        "build_seconds": round(time.time() - t0, 2)}
                    bar.update(note=entry["id"])
            manifest = bundle_io.read_bundle(tmp, verify=False).manifest
            for entry in graph_entries(manifest):
                new = records[entry["id"]]
                put_build(entry, new, lambda b: b["format"] == "tensorrt" and b.get("device") ==
                          new["device"] and precision_of(b) == new["precision"])
            manifest["files"].update(bundle_io.hash_files(tmp, [r["file"] for r in records.values()]))
            manifest["provenance"]["passes"].append(dict(info, name=pass_name,
                                                         device=plan["device"]))
            bundle_io.write_manifest(tmp, manifest)
        return [records[e["id"]] for e in entries]
