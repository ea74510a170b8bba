"""3D ResNet encoders on MONAI's ``ResNet``, in the 3D-ResNets-PyTorch layout.

MONAI's defaults differ from the layout the Kinetics weights (and the seed method) use:
``conv1_t_stride`` applies to all three axes, so its default stride 1 keeps the full in-plane
resolution after the stem and costs about 4x the FLOPs; and ``bias_downsample`` defaults to True,
which adds a bias to every shortcut convolution that the Kinetics checkpoints do not have. Here the
stem is a (7, 7, 7) convolution with stride (1, 2, 2), shortcuts are 1x1x1 convolutions without bias
followed by batch norm (type "B"), the max pool is kept, and there is no classifier.

Options of :class:`EncoderConfig` for the seed's configuration (all off by default, so checkpoints and
Kinetics weights of the plain layout load unchanged):

- ``keep_depth``: the stem's max pool is (1, 3, 3) with stride (1, 2, 2), so depth keeps its full
  resolution through the stem (the seed's 1-channel stem); by default it is 3x3x3 with stride 2.
- ``pooling``: ``avg`` (AdaptiveAvgPool3d) or ``max`` (AdaptiveMaxPool3d, the seed's) global pooling.
- ``embedding``: a linear layer after the pooling (the seed's fc 2048 -> 512); 0 = none.
- ``input_norm``: an InstanceNorm3d (no affine parameters) on the input, as the seed put first.

Because :class:`Encoder` subclasses MONAI's ``ResNet``, its state-dict keys are exactly the
3D-ResNets-PyTorch names (``conv1.weight``, ``layer1.0.downsample.0.weight``, ...).
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck, get_inplanes
from torch import Tensor

from napari_vesuvius_pt.config import ENCODER_NAMES, ENCODER_POOLINGS, EncoderConfig
from napari_vesuvius_pt.errors import ConfigError, RunError

STAGES = ("layer1", "layer2", "layer3", "layer4")

# name -> (block, blocks per stage); the same table as 3D-ResNets-PyTorch's generate_model.
ARCHITECTURES: dict[str, tuple[type[ResNetBlock] | type[ResNetBottleneck], tuple[int, int, int, int]]] = {
    "resnet10": (ResNetBlock, (1, 1, 1, 1)),
    "resnet18": (ResNetBlock, (2, 2, 2, 2)),
    "resnet34": (ResNetBlock, (3, 4, 6, 3)),
    "resnet50": (ResNetBottleneck, (3, 4, 6, 3)),
}

STEM_KERNEL = (7, 7, 7)
STEM_STRIDE = (1, 2, 2)  # (z, y, x): depth keeps full resolution through the stem


class Encoder(ResNet):
    """A 3D ResNet trunk returning a pooled embedding and, on request, each stage's feature map.

    ``forward(x)`` takes ``(batch, in_channels, depth, size, size)`` floats and returns the
    ``(batch, embedding_dim)`` global-average-pooled embedding; with ``return_features=True`` it
    returns ``(embedding, {"layer1": ..., "layer4": ...})``.
    """

    check_finite: bool = True  # reject NaN/Inf batches with a clear error (one cheap reduction per call)

    def __init__(self, spec: EncoderConfig) -> None:
        if spec.name not in ARCHITECTURES:
            raise ConfigError(f"unknown encoder {spec.name!r}; choose one of {', '.join(ENCODER_NAMES)}")
        if not spec.widen_factor > 0 or int(get_inplanes()[0] * spec.widen_factor) < 1:
            raise ConfigError(
                f"encoder widen_factor {spec.widen_factor} leaves no channels; use a value such as 0.25, 0.5 or 1.0"
            )
        if int(spec.in_channels) < 1:
            raise ConfigError(f"encoder in_channels must be at least 1, got {spec.in_channels}")
        block, layers = ARCHITECTURES[spec.name]
        super().__init__(
            block=block,
            layers=list(layers),
            block_inplanes=get_inplanes(),
            spatial_dims=3,
            n_input_channels=int(spec.in_channels),
            conv1_t_size=STEM_KERNEL,
            conv1_t_stride=STEM_STRIDE,
            no_max_pool=False,
            shortcut_type="B",
            widen_factor=float(spec.widen_factor),
            feed_forward=False,
            bias_downsample=False,
        )
        if spec.pooling not in ENCODER_POOLINGS:
            raise ConfigError(f"unknown encoder pooling {spec.pooling!r}; choose one of {', '.join(ENCODER_POOLINGS)}")
        if int(spec.embedding) < 0:
            raise ConfigError(f"encoder embedding must be 0 (none) or a positive width, got {spec.embedding}")
        self.spec = EncoderConfig(
            name=spec.name, widen_factor=float(spec.widen_factor), in_channels=int(spec.in_channels),
            keep_depth=bool(spec.keep_depth), pooling=spec.pooling, embedding=int(spec.embedding),
            input_norm=bool(spec.input_norm),
        )
        widths = [int(c * spec.widen_factor) for c in get_inplanes()]
        self.stage_channels: dict[str, int] = {name: w * block.expansion for name, w in zip(STAGES, widths)}
        trunk_dim = self.stage_channels["layer4"]
        if self.spec.keep_depth:  # the seed's stem pool: (1, 3, 3) stride (1, 2, 2)
            self.maxpool = torch.nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        if self.spec.pooling == "max":
            self.avgpool = torch.nn.AdaptiveMaxPool3d(1)  # the name stays: it is the global pooling
        # parameter-free, so the state-dict keys stay the 3D-ResNets-PyTorch names
        self.input_norm = torch.nn.InstanceNorm3d(int(spec.in_channels)) if self.spec.input_norm else None
        self.embed = torch.nn.Linear(trunk_dim, self.spec.embedding) if self.spec.embedding else None
        self.embedding_dim: int = self.spec.embedding or trunk_dim

    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ConfigError(f"encoder input must be a torch tensor, got {type(x).__name__}")
        c = self.spec.in_channels
        if x.ndim != 5:
            hint = " (add the channel axis with x[:, None])" if x.ndim == 4 and c == 1 else ""
            raise ConfigError(
                f"encoder input must be shaped (batch, {c}, depth, size, size), got {tuple(x.shape)}{hint}"
            )
        if x.shape[1] != c:
            raise ConfigError(
                f"encoder {self.spec.name} takes {c} input channel(s), got {x.shape[1]} in a batch shaped "
                f"{tuple(x.shape)}; tensors are (batch, channel, depth, size, size)"
            )
        if not x.is_floating_point():
            raise ConfigError(f"encoder input must be floating point (normalized tiles), got {x.dtype}")
        if min(x.shape[2:]) < 1 or x.shape[0] < 1:
            raise ConfigError(f"encoder input has an empty axis: {tuple(x.shape)}")
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise RunError(
                "the input batch holds NaN or infinite values; check the segment's normalization "
                "(normalization_params) and that the tiles lie inside the volume"
            )

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        self.check_input(x)
        embedding, features = self.forward_features(x)
        return (embedding, features) if return_features else embedding

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The embedding and every stage's map, without input checks (callers that checked already)."""
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        features: dict[str, Tensor] = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            features[name] = x
        pooled = self.avgpool(x).flatten(1)
        if self.embed is not None:
            pooled = self.embed(pooled)
        return pooled, features


def build_encoder(name: str = "resnet18", in_channels: int = 1, widen_factor: float = 1.0, **options) -> Encoder:
    """A randomly initialized encoder; ``name`` is one of :data:`ENCODER_NAMES`; ``options`` are the other
    :class:`EncoderConfig` fields (keep_depth, pooling, embedding, input_norm)."""
    return Encoder(EncoderConfig(name=name, widen_factor=widen_factor, in_channels=in_channels, **options))


def encoder_from_spec(spec: EncoderConfig | dict) -> Encoder:
    """Rebuild an encoder from an ``EncoderConfig`` or its dict form (as saved in checkpoints)."""
    if isinstance(spec, dict):
        from napari_vesuvius_pt.config import from_dict

        spec = from_dict(EncoderConfig, spec, where="encoder_spec")
    return Encoder(spec)
