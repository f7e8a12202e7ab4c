"""Masked residual blocks (coarse spatial masks, LASNet-style) and their export for sparse
execution.

:class:`MaskedBlock` is a stage ``y = x + keep * branch(x)``: a small masker gives one logit
per ``G x G`` output region, and a region is computed when ``sigmoid(logit) >= threshold``.
In training the mask is the hard decision with a straight-through gradient of the sigmoid
(``active_fraction`` holds the soft share of active regions for a budget loss). The converter
writes three graphs for such a stage: the dense masked block (what other backends and the
reference run), the masker, and the block as a *patch graph*: the input plus the branch's
convolutions without padding, run on the active regions each with its halo, laid side by
side (:mod:`edgesdk.runtime.spatial` gathers and scatters; :func:`patch_branch` says how
the image border's zero padding is kept).
The branch must be an ``nn.Sequential`` of stride-1 ``Conv2d`` layers with "same" zero
padding and per-pixel layers (batch norm, activations).
"""
from edgesdk.deps import require
from edgesdk.errors import ModelStructureError

POINTWISE = ("BatchNorm2d", "ReLU", "ReLU6", "LeakyReLU", "SiLU", "GELU", "Hardswish",
             "Sigmoid", "Tanh", "Identity", "Dropout", "Dropout2d")


def _nn():
    return require("torch", "torch", "build masked blocks").nn


def branch_halo(branch):
    """The receptive-field halo (pixels on each side) of ``branch``'s convolutions;
    :class:`ModelStructureError` for a layer a patch graph cannot replay."""
    nn = _nn()
    if not isinstance(branch, nn.Sequential):
        raise ModelStructureError("a masked block's branch must be an nn.Sequential, got {}"
                                  .format(type(branch).__name__))
    halo = 0
    for name, layer in branch.named_children():
        if isinstance(layer, nn.Conv2d):
            k, d = layer.kernel_size, layer.dilation
            same = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
            if layer.stride != (1, 1) or k[0] != k[1] or k[0] % 2 == 0 or \
                    layer.padding != same or layer.padding_mode != "zeros":
                raise ModelStructureError(
                    "masked block layer '{}': only stride-1 convolutions with odd square "
                    "kernels and 'same' zero padding can run on patches (got kernel {}, "
                    "stride {}, padding {})".format(name, k, layer.stride, layer.padding))
            halo += same[0]
        elif type(layer).__name__ not in POINTWISE:
            raise ModelStructureError(
                "masked block layer '{}' ({}) is not a convolution or a per-pixel layer ({}): "
                "a patch graph cannot replay it".format(name, type(layer).__name__,
                                                         ", ".join(POINTWISE)))
    return halo


def MaskedBlock(branch, masker, granularity, threshold=0.5):  # noqa: N802 - reads as a class
    """A residual block computed only where a coarse spatial mask says so (see the module
    docstring): ``branch`` (C -> C channels, same size), ``masker`` (the block's input ->
    ``(N, 1, H/G, W/G)`` logits), ``granularity`` G. Returns an ``nn.Module``."""
    torch = require("torch", "torch", "build masked blocks")
    nn = torch.nn
    halo = branch_halo(branch)
    if int(granularity) < 1 or not 0.0 < float(threshold) < 1.0:
        raise ModelStructureError("granularity must be a positive integer and threshold in (0, 1)")

    class Masked(nn.Module):
        edgesdk_spatial = True

        def __init__(self):
            super().__init__()
            self.branch, self.masker = branch, masker
            self.granularity, self.threshold, self.halo = int(granularity), float(threshold), halo
            self.active_fraction = None

        def keep(self, x):
            """The (N, 1, H/G, W/G) mask as floats: 1 where the region is computed."""
            logits = self.masker(x)
            t = self.threshold
            hard = (logits >= float(torch.log(torch.tensor(t / (1 - t))))).to(x.dtype)
            if self.training:   # straight-through: the hard mask, the sigmoid's gradient
                soft = torch.sigmoid(logits)
                self.active_fraction = soft.mean()
                return hard + soft - soft.detach()
            return hard

        def forward(self, x):
            g = self.granularity
            if x.shape[2] % g or x.shape[3] % g:
                raise ModelStructureError("a masked block with granularity {} needs sizes "
                                          "divisible by it, got {}".format(g, list(x.shape[2:])))
            mask = nn.functional.interpolate(self.keep(x), scale_factor=g, mode="nearest")
            return x + mask * self.branch(x)
    return Masked()


def validity_layers(branch):
    """Indices of ``branch``'s convolutions whose patch input must be multiplied by the
    validity mask: those reading past the region (before the halo's edge) after any other
    layer, whose values outside the image are not the zeros the dense branch pads with. A
    first layer reads the gathered input, already zero there; a convolution at the halo's
    edge is 1x1, and its outputs outside the region are thrown away."""
    nn = _nn()
    crop, halo, found = 0, branch_halo(branch), []
    for index, layer in enumerate(branch.children()):
        if isinstance(layer, nn.Conv2d):
            if index > 0 and crop < halo:
                found.append(index)
            crop += layer.dilation[0] * (layer.kernel_size[0] - 1) // 2
    return found


def needs_validity(branch):
    """Whether ``branch``'s patch graph takes the validity mask (:func:`validity_layers`)."""
    return bool(validity_layers(branch))


def patch_branch(block):
    """The masked block computed on a mosaic of patches, as a module ``(mosaic[, valid]) ->
    the block's output on the patches' regions`` (their input plus the branch): the branch's
    convolutions without padding, a convolution's input multiplied by the validity mask
    cropped to its size where :func:`validity_layers` says so (zeros where the dense branch
    pads). Run on patches side by side (see :func:`edgesdk.runtime.spatial.gather`); outputs
    whose receptive field crosses two patches are computed and thrown away. The residual
    sum is in the graph so that the runtime only copies results back, which numpy does 3x
    faster than adding them to strided regions."""
    torch = require("torch", "torch", "export masked blocks")
    nn, F = torch.nn, torch.nn.functional
    masked = validity_layers(block.branch)
    halo = block.halo

    class PatchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(block.branch.children())
            c = next(m for m in self.layers if isinstance(m, nn.Conv2d)).in_channels
            eye = torch.zeros(c, 1, 2 * halo + 1, 2 * halo + 1)
            eye[:, 0, halo, halo] = 1.0
            self.register_buffer("eye", eye)

        def run(self, patches, valid):
            x, crop = patches, 0
            rows, cols = patches.shape[2], patches.shape[3]
            for index, layer in enumerate(self.layers):
                if isinstance(layer, nn.Conv2d):
                    if index in masked:
                        x = x * valid[:, :, crop:rows - crop, crop:cols - crop]
                    x = F.conv2d(x, layer.weight, layer.bias, 1, 0, layer.dilation, layer.groups)
                    crop += layer.dilation[0] * (layer.kernel_size[0] - 1) // 2
                else:
                    x = layer(x)
            if not halo:
                return x + patches
            # The input cropped to the region by an identity depthwise convolution rather
            # than a Slice: TVM's ONNX frontend cannot add a Slice of a symbolic width to the
            # branch (it cannot prove the shapes equal), and it costs what the Slice did.
            return x + F.conv2d(patches, self.eye, None, 1, 0, 1, self.eye.shape[0])

    if masked:
        class WithValid(PatchBlock):
            def forward(self, patches, valid):
                return self.run(patches, valid)
        return WithValid().eval()

    class Plain(PatchBlock):
        def forward(self, patches):
            return self.run(patches, None)
    return Plain().eval()

