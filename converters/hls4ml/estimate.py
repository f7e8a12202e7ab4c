"""Resource and latency estimates of hls4ml graphs, computed by edgesdk from layer shapes,
reuse factors and bit widths. They are estimates, labelled so everywhere: only Vitis HLS
synthesis (not available here) gives real figures. The model:

* multipliers: a layer instantiates ``ceil(products per output / reuse factor)`` of them;
  products with both operands of at most 10 bits go to LUTs (about ``w * a / 2 + 4`` LUTs
  each, Vivado's usual mapping of small products), wider ones to one DSP each;
* memory: ``io_stream`` convolutions keep ``filter height - 1`` input rows (line buffers), and
  every stream between layers is a FIFO as deep as the layer's output (hls4ml's default);
  BRAM18 blocks are 512 x 36 bits, FIFOs under 1 Kbit sit in LUTs;
* time: a streamed layer takes one input pixel per ``reuse`` cycles, a parallel (dense)
  layer ``reuse`` cycles plus its adder tree; a graph's latency is the sum over its layers
  (an upper bound: dataflow overlaps them) and its initiation interval the slowest layer.
"""
import math

LABEL = "estimate from layer shapes, reuse factor and widths (edgesdk's model, not synthesis)"
SMALL_PRODUCT_BITS = 10
BRAM_BITS = 512 * 36


def _bits(layer, key):
    t = layer.types.get(key)
    return int(t.precision.width) if t is not None else 16


def _input_bits(layer):
    try:
        return int(layer.get_input_variable().type.precision.width)
    except Exception:  # an input layer has none
        return 16


def _brams(width_bits, depth):
    if width_bits * depth <= 1024:
        return 0
    return int(math.ceil(width_bits / 36.0) * math.ceil(depth / 512.0))


def layer_estimate(layer, io_type):
    """``{"layer", "kind", "multipliers", "dsp", "lut", "bram_18k", "cycles"}`` of one
    hls4ml layer."""
    a = layer.get_attr
    reuse = int(a("reuse_factor", 1) or 1)
    kind = layer.class_name
    shape = list(layer.get_output_variable().shape)
    out_bits = _bits(layer, "result_t")
    products, cycles, bram = 0, 1, 0
    if kind.startswith("Conv2D") or kind.startswith("PointwiseConv2D"):
        products = a("filt_height") * a("filt_width") * a("n_chan") * a("n_filt")
        pixels = a("in_height") * a("in_width")
        cycles = pixels * reuse if io_type == "io_stream" else reuse
        if io_type == "io_stream":
            bram += _brams(a("n_chan") * _input_bits(layer), (a("filt_height") - 1) * a("in_width"))
    elif kind == "Dense":
        products = a("n_in") * a("n_out")
        cycles = reuse + int(math.ceil(math.log2(max(a("n_in"), 2))))
    elif len(shape) == 3 and io_type == "io_stream":  # pooling, activations on feature maps
        cycles = shape[0] * shape[1]
    multipliers = int(math.ceil(products / float(reuse))) if products else 0
    w_bits, x_bits = _bits(layer, "weight_t"), _input_bits(layer)
    small = w_bits <= SMALL_PRODUCT_BITS and x_bits <= SMALL_PRODUCT_BITS
    dsp = 0 if small else multipliers
    lut = multipliers * (w_bits * x_bits // 2 + 4) if small else multipliers * 8
    elements = int(math.ceil(float(_size(shape)) / (shape[-1] if shape else 1)))
    if io_type == "io_stream" and len(shape) == 3:
        fifo = _brams(shape[-1] * out_bits, elements)
        bram += fifo
        if not fifo:
            lut += shape[-1] * out_bits * elements // 32  # SRL-based FIFO
    else:
        lut += _size(shape) * out_bits // 8  # registers and muxes of a parallel result
    return {"layer": layer.name, "kind": kind, "multipliers": multipliers, "dsp": dsp,
            "lut": int(lut), "ff": int(lut), "bram_18k": int(bram), "cycles": int(cycles)}


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def estimate(layers, fabric, io_type):
    """The estimate of one graph (a list of hls4ml layers) on ``fabric``."""
    rows = [layer_estimate(l, io_type) for l in layers]
    total = {k: sum(r[k] for r in rows) for k in ("dsp", "lut", "ff", "bram_18k")}
    cycles = sum(r["cycles"] for r in rows)
    return dict(total, label=LABEL, layers=rows, latency_cycles=int(cycles),
                interval_cycles=int(max([r["cycles"] for r in rows] or [1])),
                latency_ms=cycles / (fabric.clock_mhz * 1000.0), clock_mhz=fabric.clock_mhz)


def over_budget(used, fabric, reuse_factor, what):
    """Messages for each resource ``used`` beyond the fabric's budget, with the knob to turn."""
    out = []
    for key, budget in sorted(fabric.budget().items()):
        if used.get(key, 0) > budget:
            factor = int(math.ceil(reuse_factor * used[key] / float(budget)))
            knob = ("raise the reuse factor to {} or more".format(factor)
                    if key in ("dsp", "lut", "ff") else
                    "use fewer bits (width) or smaller feature maps")
            out.append("{} needs {} {} of {} on {} ({}): {}".format(
                what, used[key], key.upper().replace("_18K", "18K"), budget, fabric.part,
                "estimated", knob))
    return out
