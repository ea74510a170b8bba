"""Run configurations as dataclasses, saved as YAML beside every checkpoint.

A config saved in a run folder reproduces the run: ``vesuvius-pt pretrain --config RUN/config.yaml``.
Widgets build the same dataclasses, so the GUI and the CLI share one code path.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from napari_vesuvius_pt.errors import ConfigError

T = TypeVar("T")

# ---------------------------------------------------------------- choices
# Each choice list is defined once, here, as the Literal type of its config field; the tuples are what
# argparse's ``choices=``, the widgets' combo boxes and the engine's checks take (no torch needed).

Optimizer = Literal["sgd", "adamw", "lars"]  # sgd: with Nesterov momentum
Normalization = Literal["none", "kaggle", "minmax", "zscore", "instance", "div255"]  # div255: 8-bit / 255, no clip
EncoderName = Literal["resnet10", "resnet18", "resnet34", "resnet50"]
EncoderPooling = Literal["avg", "max"]  # the encoder's global pooling (AdaptiveAvgPool3d / AdaptiveMaxPool3d)
DepthPooling = Literal["max", "attention", "mean"]  # how the ink head pools each feature map over depth
CKALayer = Literal["pooled", "layer1", "layer2", "layer3", "layer4"]
Weighting = Literal["mean", "gaussian"]  # how overlapping tile predictions are blended
PredictDtype = Literal["float16", "uint8"]  # float16 probabilities, or uint8 probability * 255
ZarrCodec = Literal["blosc-lz4", "none"]  # `convert`: Blosc LZ4 + byte shuffle, or uncompressed chunks
PredictDirection = Literal["forward", "reverse", "both"]  # depth direction(s) predict reads; both: each and the mean
PredictFormat = Literal["ome-zarr", "tiff"]  # predict's output: an OME-Zarr group, or tiled BigTIFFs
DemoScaleName = Literal["quick", "laptop", "seed"]
# the seed's two splits of the Kaggle fragments 1-4 (engine/protocols.py): validate on the lower 30% of
# fragment 2 and train on the rest; or pretrain with fragment 4 unlabeled, train on 1-3, validate on 4
Protocol = Literal["fragment2-lower30", "fragment4-holdout"]
BaselineMethod = Literal["lda", "logistic"]  # the per-pixel linear z-profile baseline (analysis/baseline.py)
OutputStride = Literal[1, 2, 4, 8]
ScheduleUnit = Literal["step", "epoch"]  # how often the warm-up/cosine learning rate changes
DeviceName = Literal["auto", "cpu", "cuda", "mps"]  # fixed names (auto: cuda, else mps, else cpu); fields also take "cuda:N"
FeatureLayer = Literal["layer1", "layer2", "layer3", "layer4"]  # the embedding explorer's per-position features

OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
NORMALIZATIONS: tuple[str, ...] = typing.get_args(Normalization)
ENCODER_NAMES: tuple[str, ...] = typing.get_args(EncoderName)
ENCODER_POOLINGS: tuple[str, ...] = typing.get_args(EncoderPooling)
DEPTH_POOLINGS: tuple[str, ...] = typing.get_args(DepthPooling)
CKA_LAYERS: tuple[str, ...] = typing.get_args(CKALayer)
WEIGHTINGS: tuple[str, ...] = typing.get_args(Weighting)
PREDICT_DTYPES: tuple[str, ...] = typing.get_args(PredictDtype)
ZARR_CODECS: tuple[str, ...] = typing.get_args(ZarrCodec)
PREDICT_DIRECTIONS: tuple[str, ...] = typing.get_args(PredictDirection)
PREDICT_FORMATS: tuple[str, ...] = typing.get_args(PredictFormat)
DEMO_SCALES: tuple[str, ...] = typing.get_args(DemoScaleName)
PROTOCOLS: tuple[str, ...] = typing.get_args(Protocol)
BASELINE_METHODS: tuple[str, ...] = typing.get_args(BaselineMethod)
OUTPUT_STRIDES: tuple[int, ...] = typing.get_args(OutputStride)
SCHEDULE_UNITS: tuple[str, ...] = typing.get_args(ScheduleUnit)
DEVICE_NAMES: tuple[str, ...] = typing.get_args(DeviceName)
FEATURE_LAYERS: tuple[str, ...] = typing.get_args(FeatureLayer)

# Where runs go by default: never inside a source checkout (``VESUVIUS_PT_RUNS`` moves it).
DEFAULT_RUNS_DIR = Path(os.environ.get("VESUVIUS_PT_RUNS") or Path.home() / "vesuvius-runs").expanduser()


@dataclass
class DataConfig:
    """How every segment of a run is read: the same for training, prediction and CKA probes."""

    z_range: list[int] | None = None  # [start, stop) in the file's layer indices; None = all layers
    reverse: bool = False  # flip the depth axis (some published segments are stored reversed)
    downsample: int = 1  # in-plane downsampling factor (the seed halves fragments to match scrolls)
    normalization: Normalization = "kaggle"
    normalization_params: dict[str, float] = field(default_factory=dict)  # fitted values, filled at start


@dataclass
class EncoderConfig:
    name: EncoderName = "resnet18"
    widen_factor: float = 1.0
    in_channels: int = 1
    keep_depth: bool = False  # stem max pool (1, 3, 3) stride (1, 2, 2): depth kept (the seed's stem)
    pooling: EncoderPooling = "avg"  # global pooling of the embedding; the seed: max
    embedding: int = 0  # a linear layer after the pooling to this width (the seed: 2048 -> 512); 0 = none
    input_norm: bool = False  # InstanceNorm3d on the input (the seed's first layer)


@dataclass
class TileConfig:
    depth: int = 16  # layers per tile (the z-shifted views read up to max_z_shift more)
    size: int = 64  # in-plane tile size (pixels after downsampling)
    stride: int = 32  # grid stride for sampling tiles
    min_mask_fraction: float = 1.0  # fraction of the tile inside the (eroded) mask; the seed used fully inside


def knob(default: Any, help: str, low: float | None = None, high: float | None = None) -> Any:
    """A config field with the help text and the range the widgets' forms show (``ui/config_form.py``)."""
    return field(default=default, metadata={"help": help, "range": (low, high)})


@dataclass
class AugmentConfig:
    """The seed's recipe: z-shift, flips/rotations, shift-scale-rotate, intensity, blur/noise, holes."""

    max_z_shift: int = knob(2, "Each view starts 0 to this many layers below the tile's first layer", 0, 16)
    same_z_shift: bool = knob(False, "Both views share one z offset (no z-translation between them)")
    flip: bool = knob(True, "Random horizontal and vertical flips")
    rotate90: bool = knob(True, "Random 90° rotations in the plane")
    shift_scale_rotate: float = knob(0.75, "Probability of a random shift, scale and rotation", 0, 1)
    max_shift: float = knob(0.15, "Largest shift, as a fraction of the tile side", 0, 1)
    max_scale: float = knob(0.15, "Largest scale change (1 ± this)", 0, 1)
    max_rotate_deg: float = knob(45.0, "Largest rotation in degrees", 0, 180)
    grid_distortion: float = knob(0.3, "Probability of a grid distortion", 0, 1)
    grid_steps: int = knob(5, "Cells per axis of the grid distortion", 1, 32)
    grid_limit: float = knob(0.3, "Each grid cell's size changes by up to this fraction", 0, 1)
    brightness_contrast: float = knob(0.75, "Probability of a brightness and contrast change", 0, 1)
    max_brightness: float = knob(0.2, "Largest brightness change", 0, 1)
    max_contrast: float = knob(0.2, "Largest contrast change", 0, 1)
    gamma: float = knob(0.3, "Probability of a gamma change", 0, 1)
    max_gamma: float = knob(0.2, "Gamma drawn in [1 - this, 1 + this]", 0, 0.9)
    noise: float = knob(0.4, "Probability of Gaussian noise", 0, 1)
    noise_std: float = knob(0.05, "Standard deviation of the noise (normalised intensities)", 0, 1)
    blur: float = knob(0.4, "Probability of a Gaussian or motion blur", 0, 1)
    holes: int = knob(4, "Small cut-out holes per view (up to)", 0, 32)
    hole_size: float = knob(0.06, "Side of a small hole, as a fraction of the tile side", 0, 1)
    big_holes: int = knob(1, "Large cut-out holes per view (up to)", 0, 8)
    big_hole_size: float = knob(0.15, "Side of a large hole, as a fraction of the tile side", 0, 1)


@dataclass
class VICRegConfig:
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0  # the seed's own run used 5
    expander: list[int] = field(default_factory=lambda: [512, 256, 512])


@dataclass
class OptimConfig:
    name: Optimizer = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-5
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    warmup_start: float = 0.0  # the warm-up starts at lr * warmup_start (the seed's x10 warm-up: 0.1)
    schedule_unit: ScheduleUnit = "step"  # the rate changes every optimizer step, or once per epoch (the seed)
    grad_clip: float = 3.0  # max global grad norm; 0 disables
    accumulate: int = 1  # gradient accumulation steps


@dataclass
class TrainingConfig:
    """What every training run (pretraining, fine-tuning) is given besides its data and its objective.

    In the saved YAML a run's own fields (its segments or fragments, its loss) come first, these after.
    """

    out: str = str(DEFAULT_RUNS_DIR / "run")  # the run folder
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 3
    batch_size: int = 8
    steps_per_epoch: int | None = None  # None: one pass over the tiles
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # autocast on CUDA only
    cpu_bf16: bool = False  # bfloat16 autocast on the CPU too, where it has it natively (bench/bench_cpu.py)
    num_workers: int = 0  # DataLoader workers (spawn); 0 reads in the training process
    prefetch: int = 2  # with num_workers 0: batches read ahead in a background thread (0: read in the loop)
    seed: int = 0
    resume: str | None = None  # a run folder to continue


@dataclass
class PretrainConfig(TrainingConfig):
    segments: list[str] = field(default_factory=list)  # scroll segments and unlabeled fragments
    vicreg: VICRegConfig = field(default_factory=VICRegConfig)
    mask_erosion: int = 8  # pixels the mask is eroded by before tiles are kept (ragged edges, glue, air)
    # the online probe (engine/online_probe.py): a frozen linear probe scored on a labeled fragment's regions
    probe_fragment: str | None = None  # a labeled fragment; with probe_region, probed every probe_every epochs
    probe_region: str | None = None  # validation polygons (JSON/CSV) on probe_fragment; the rest fits the probe
    probe_every: int = 1  # epochs between probes (the last epoch is always probed)
    probe_tiles: int = 64  # tiles each side (fit / score), non-overlapping, evenly spread
    # TrainingConfig's fields with this run's defaults (they keep their place among the shared fields)
    out: str = str(DEFAULT_RUNS_DIR / "pretrain")


@dataclass
class FinetuneConfig(TrainingConfig):
    fragments: list[str] = field(default_factory=list)  # training fragments (with ink labels)
    val_fragment: str | None = None  # a whole fragment for validation, or
    val_region: str | None = None  # a JSON/CSV of polygons on the training fragment it names (else the first), or
    val_mask: bool = False  # the first training fragment's own validation mask (villa's <id>_validation_mask)
    supervision_masks: bool = True  # only the fragments' supervision masks count in loss and metrics (when they have one)
    ignore_masks: bool = True  # the fragments' ignore masks leave the loss and metrics (when they have one)
    encoder_origin: str = "random"  # random | k700:FILE | RUN_FOLDER | CHECKPOINT
    freeze_encoder: bool = False
    encoder_lr_scale: float = 0.1  # encoder lr = lr * scale when not frozen
    output_stride: OutputStride = 4
    depth_pooling: DepthPooling = "max"  # the ink head's pooling over depth (docs/defaults-study.md)
    only_ink_tiles: bool = False  # train only on tiles with some ink (the reference models did)
    skip_empty_eval: bool = False  # evaluate only tiles with some ink (the seed did)
    val_subsample: int = 512  # validation tiles scored each epoch (a fixed random subsample, their normalized
    # tiles cached between epochs); the last epoch scores them all; 0: all, every epoch
    label_smoothing: float = 0.0
    bce_weight: float = 0.5  # loss = bce_weight * BCE + (1 - bce_weight) * Dice
    region_margin: int = 0  # extra pixels between validation polygons and training tiles
    # TrainingConfig's fields with this run's defaults (they keep their place among the shared fields)
    # The defaults learn ink within 5 epochs on CPU and GPU alike (docs/defaults-study.md, bench/defaults_study.py):
    # a small encoder, z-scored input, 48-pixel tiles at stride 16 (4x the steps per epoch), AdamW 3e-3,
    # max pooling over depth (depth_pooling above).
    out: str = str(DEFAULT_RUNS_DIR / "finetune")
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(name="resnet10", widen_factor=0.5))
    data: DataConfig = field(default_factory=lambda: DataConfig(normalization="zscore"))
    tile: TileConfig = field(default_factory=lambda: TileConfig(depth=16, size=48, stride=16, min_mask_fraction=0.5))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4,
                                                                   warmup_epochs=0.5))
    epochs: int = 5


@dataclass
class PredictConfig:
    checkpoints: list[str] = field(default_factory=list)  # one output array per checkpoint
    segment: str = ""
    out: str = "prediction.zarr"
    region: str | None = None  # polygons JSON/CSV: predict only there
    stride: int | None = None  # None: tile size - 2 * edge (kept centres tile the plane exactly)
    edge: int = 8  # pixels dropped at each side of a tile's prediction (full resolution)
    weighting: Weighting = "mean"
    batch_size: int = 8
    device: str = "auto"
    data: DataConfig | None = None  # None: the checkpoint's own
    dtype: PredictDtype = "float16"  # float16 probabilities | uint8 (probability * 255)
    full_resolution: bool = True  # upsample the reduced-size output when writing (False: the model's output grid)
    resume: bool = True
    names: list[str] | None = None  # one array name per checkpoint; None: run folder name or file stem
    z0: int | None = None  # first layer of each tile; None: centred in the segment's layers
    chunk: int = 256  # output chunk side (stored pixels), rounded to whole tile-row strides in y
    amp: bool = True  # bfloat16 autocast on CUDA only
    cpu_bf16: bool = False  # bfloat16 autocast on the CPU too, where it has it natively (bench/bench_cpu.py)
    tta: bool = False  # test-time augmentation: mean of the 8 flips/rotations of each tile (8x the compute)
    direction: PredictDirection = "forward"  # forward: as trained; reverse: layers flipped; both: each and the mean
    format: PredictFormat = "ome-zarr"  # tiff: also a tiled BigTIFF per array beside --out


@dataclass
class CKAConfig:
    sources: list[str] = field(default_factory=list)  # run folders, checkpoints, random, k700:FILE
    segment: str = ""
    out: str = "cka"
    tiles: int = 256  # probe tiles
    layer: CKALayer = "pooled"
    data: DataConfig | None = None
    tile: TileConfig | None = None
    threshold: float = 0.5  # RBF bandwidth: sigma^2 = threshold^2 * median squared distance
    debiased: bool = False
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0


@dataclass
class FeaturesConfig:
    """The embedding explorer (``vesuvius-pt features``, engine/features.py): per-position features of
    each encoder over a region of a segment, one PCA basis shared by all, written to a zarr."""

    encoders: list[str] = field(default_factory=lambda: ["random"])  # random[:ARCH], k700:FILE, RUN, RUN@EPOCH, CKPT
    segment: str = ""
    region: list[int] | None = None  # [y0, x0, y1, x1] in full-resolution pixels; None: the whole plane
    layer: FeatureLayer = "layer2"
    tile: TileConfig = field(default_factory=lambda: TileConfig(depth=16, size=64, stride=64))
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 8
    out: str = ""  # FEATURES.zarr; "" writes nothing (the widget keeps the maps in memory)
    device: str = "auto"


# ---------------------------------------------------------------- (de)serialization


def to_dict(cfg: Any) -> dict[str, Any]:
    """``cfg`` as plain data; a subclass's own fields come before the ones it inherits."""
    data = dataclasses.asdict(cfg)
    inherited = {f.name for base in type(cfg).__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    return {k: data[k] for k in sorted(data, key=lambda k: k in inherited)}


def _convert(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(str(c) for c in choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_convert(inner, v, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a (possibly partial) mapping; unknown keys are an error, not silently dropped."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def save_config(cfg: Any, path: str | Path) -> None:
    from napari_vesuvius_pt._atomic import atomic_write_text

    header = f"# {type(cfg).__name__} written by napari-vesuvius-pt; reproduce with the CLI's --config\n"
    atomic_write_text(path, header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1.0e6``, ``1e-3`` and ``.5`` are numbers (YAML 1.1
    wants a sign in the exponent and a dot, so ``lr: 1.0e6`` used to be read as a string)."""


ConfigLoader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path} is not valid YAML: {what}{where}"


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping (``{}`` when empty); ConfigError when missing, unreadable or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=ConfigLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options")
    return data


def load_config(cls: type[T], path: str | Path) -> T:
    """``cls`` from a YAML file: a run's own config (its fields at the top level), or a sectioned file
    (``resources/configs/*.yaml``: top-level keys among ``SECTIONS``), whose section for ``cls`` is read
    (PretrainConfig: ``pretrain:``, FinetuneConfig: ``finetune:``, ...)."""
    data = read_config_mapping(path)
    if data and set(data) <= set(SECTIONS):
        # a sectioned file (resources/configs/*.yaml): the section for cls
        section = config_section(cls)
        if section is None or section not in data:
            raise ConfigError(f"{path} is a sectioned config ({', '.join(data)}) without a "
                              f"{section or cls.__name__}: section; add one, or give a config for {cls.__name__}")
        data = data[section] or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: section {section}: expected a mapping of options")
        return from_dict(cls, data, where=f"{path}: {section}")
    return from_dict(cls, data, where=str(path))


# A sectioned config file (resources/configs/quick|laptop|seed.yaml) has these top-level keys; each run
# config reads its own section with load_config (the demo reads ``demo:`` and all the others).
SECTIONS = ("demo", "pretrain", "finetune", "predict", "cka", "compare")


def config_section(cls: type) -> str | None:
    """The section of a sectioned config file that holds ``cls`` (PretrainConfig: ``pretrain``, ...)."""
    sections = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "predict": PredictConfig,
                "cka": CKAConfig, "compare": CompareConfig}
    return next((name for name, c in sections.items() if c is cls), None)


def merge(cfg: T, **overrides: Any) -> T:
    """A copy of ``cfg`` with the non-None overrides applied (CLI flags over a YAML config)."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class DemoConfig:
    """The seed experiment in miniature: synthetic data, VICReg pretraining, CKA, frozen-encoder ink
    probes for random / VICReg (/ Kinetics-700) encoders, tiled prediction, F0.5 report."""

    out: str = "vesuvius-demo"
    scale: DemoScaleName = "laptop"  # quick (CI) | laptop (default, < 10 min on 2 cores) | seed (ResNet-50 on a GPU)
    k700_weights: str | None = None  # a local 3D-ResNets-PyTorch Kinetics-700 checkpoint (same depth as the encoder)
    device: str = "auto"
    seed: int = 0
    protocol: Protocol = "fragment2-lower30"  # the seed's split of the (synthetic) fragments 1-4
    seeds: int | None = None  # probe seeds per encoder; None: the scale's ``demo: seeds``


@dataclass
class CompareConfig:
    """Encoders compared on one split: each one's ink probe trained with ``seeds`` seeds, predicted over
    the validation data and scored; mean ± sd per encoder, paired differences with 95% intervals (over
    seeds, and a bootstrap over validation tiles), the linear and all-ink baselines as rows."""

    encoders: list[str] = field(default_factory=lambda: ["random"])  # SOURCE or NAME=SOURCE, frozen probes
    unfrozen: list[str] = field(default_factory=list)  # SOURCE or NAME=SOURCE, fine-tuned with the encoder
    fragments: list[str] = field(default_factory=list)  # labeled fragments (with a protocol: 1, 2, 3, 4 in order)
    protocol: Protocol | None = None  # a named split of ``fragments``; else val_fragment or val_region
    val_fragment: str | None = None
    val_region: str | None = None  # polygons on the fragment the file names (else the first)
    seeds: int = 3  # probe seeds per encoder (paired across encoders: seed k starts every head alike)
    first_seed: int = 0
    unfrozen_seeds: int | None = None  # seeds of the unfrozen fine-tunes; None: ``seeds``
    probe: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(freeze_encoder=True))  # run settings;
    # its fragments, validation, encoder_origin, freeze_encoder, seed and out are set per run
    edge: int = 8  # prediction: pixels dropped at each side of a tile
    skip_empty: bool = False  # score only tiles with some ink (the seed did)
    baseline: BaselineMethod = "lda"
    bootstrap: int = 2000  # resamples of the validation tiles; 0: no bootstrap
    out: str = str(DEFAULT_RUNS_DIR / "compare")
    device: str = "auto"
