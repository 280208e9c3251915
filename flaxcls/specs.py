"""The run's config resolved once, at the edge, into the small frozen specs each part takes.

``resolve(config)`` fills the preprocessing fields the config leaves to the model, validates
every field (``flaxcls.config.validate``: one place, errors name the field) and returns the
specs. Below the edge nothing reads the flat config: the model is built from a `ModelSpec`,
the schedule and optimizer from an `OptimSpec`, the jitted step from a `StepSpec`, the data
set from a `DataSpec` and the tf.data stream from an `InputSpec`; the loop keeps a `RunSpec`.
Specs have no defaults of their own: every value comes from the config, whose defaults live
in ``flaxcls.config.default_config`` only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flaxcls.config import split_lr_strategy, validate
from flaxcls.preprocessing import (
    EvalPreprocessing,
    preprocessing_of,
    resolve_preprocessing,
    train_crop_of,
)
from flaxcls.registry import create_model


def _fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The data set's mean colour in 0-255: what auto_augment's geometric ops uncover (timm)."""
    return tuple(min(255, max(0, round(255 * m))) for m in mean)


def _teacher_cfg(c: Any):
    from flaxcls.registry import get_model_cfg

    return get_model_cfg(str(c.distill_teacher))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which network: registry name, classes, compute dtype and the stem option."""

    name: str
    num_classes: int
    dtype: str
    stem_space_to_depth: bool
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0  # before the classifier, where the released head has none

    @classmethod
    def from_config(cls, c: Any) -> ModelSpec:
        return cls(str(c.model), int(c.num_classes), str(c.dtype), bool(c.stem_space_to_depth),
                   float(c.drop_path_rate), float(c.dropout_rate))

    def build(self, **overrides: Any):
        """The (unbound) Flax module; ``overrides`` replace constructor fields."""
        extra: dict[str, Any] = {"stem_space_to_depth": True} if self.stem_space_to_depth else {}
        if self.drop_path_rate:
            extra["drop_path_rate"] = self.drop_path_rate
        if self.dropout_rate:
            extra["classifier_dropout"] = self.dropout_rate
        return create_model(self.name, num_classes=self.num_classes, dtype=self.dtype,
                            **extra, **overrides)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """The learning-rate schedule and the optimizer (``flaxcls.train.optim``)."""

    lr: float  # for lr_base_batch_size images (0: for the run's batch, unscaled)
    lr_base_batch_size: int
    lr_strategy: str  # without its warm-up suffix
    warmup_required: bool  # the strategy was named with a warm-up suffix
    warm_up_epochs: float
    num_epochs: float
    step_epochs: tuple[float, ...]
    decay_rate: float
    decay_epochs: float
    end_lr: float
    l2_decay: float
    l2_decay_mode: str  # "optimizer" or "loss"
    l2_decay_exclude_bn_bias: bool
    momentum_rate: float
    nesterov: bool
    freeze_backbone: bool
    backbone_lr_mult: float
    optimizer: str = "momentum"
    weight_decay: float = 0.0  # decoupled (AdamW-style); 0: none
    weight_decay_exclude_bn_bias: bool = True
    clip_grad_norm: float = 0.0  # 0: no clipping
    betas: tuple[float, float] | None = None  # None: the optimizer's default
    eps: float | None = None  # None: the optimizer's default
    rmsprop_decay: float = 0.9
    lars_trust_coefficient: float = 0.001

    @classmethod
    def from_config(cls, c: Any) -> OptimSpec:
        strategy, warmup = split_lr_strategy(str(c.lr_strategy))
        return cls(
            lr=float(c.lr), lr_base_batch_size=int(c.lr_base_batch_size), lr_strategy=strategy,
            warmup_required=warmup, warm_up_epochs=float(c.warm_up_epochs),
            num_epochs=float(c.num_epochs), step_epochs=tuple(float(e) for e in c.step_epochs),
            decay_rate=float(c.decay_rate), decay_epochs=float(c.decay_epochs),
            end_lr=float(c.end_lr), l2_decay=float(c.l2_decay),
            l2_decay_mode=str(c.l2_decay_mode),
            l2_decay_exclude_bn_bias=bool(c.l2_decay_exclude_bn_bias),
            momentum_rate=float(c.momentum_rate), nesterov=bool(c.nesterov),
            freeze_backbone=bool(c.freeze_backbone), backbone_lr_mult=float(c.backbone_lr_mult),
            optimizer=str(c.optimizer), weight_decay=float(c.weight_decay),
            weight_decay_exclude_bn_bias=bool(c.weight_decay_exclude_bn_bias),
            clip_grad_norm=float(c.clip_grad_norm),
            betas=None if c.opt_betas is None else tuple(float(b) for b in c.opt_betas),
            eps=None if c.opt_eps is None else float(c.opt_eps),
            rmsprop_decay=float(c.rmsprop_decay),
            lars_trust_coefficient=float(c.lars_trust_coefficient))

    @property
    def fine_tuning(self) -> bool:
        """The head and the backbone train differently (frozen, or another lr)."""
        return self.freeze_backbone or self.backbone_lr_mult != 1.0


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the jitted train and eval steps compute (``flaxcls.train.step``)."""

    num_classes: int
    dtype: str  # compute dtype
    mean: tuple[float, float, float]  # RGB, 0-1 scale
    std: tuple[float, float, float]
    label_smoothing: float  # 0: none
    mixup_alpha: float  # 0: no mixup
    cutmix_alpha: float  # 0: no CutMix
    mixup_prob: float  # chance that a batch is mixed (mixup or CutMix)
    mixup_cutmix_switch_prob: float  # with both on: chance that a mixed batch uses CutMix
    erasing: float  # Random Erasing's chance per image; 0: off
    erasing_mode: str
    erasing_count: int
    erasing_area: tuple[float, float]
    erasing_aspect: tuple[float, float]
    auto_augment: str  # the policy the step applies to the uint8 batch ("": none, or on host)
    fill: tuple[int, int, int]  # RGB of what its geometric ops uncover: the mean
    eval_flip: bool  # eval: average the logits of each image and its mirror
    bn_stats: str  # "global" or "device"
    bn_impl: str  # "flax" or "fused"
    l2_loss: float  # l2_decay when l2_decay_mode="loss" (the step adds the term), else 0
    l2_exclude_bn_bias: bool
    freeze_backbone: bool
    grad_accum_steps: int = 1  # micro-batches per step, gradients averaged (1: none)
    distill_loss: str = ""  # "": no teacher; "kl", "js" or "soft_hard"
    distill_temperature: float = 1.0
    distill_alpha: float = 0.5  # soft_hard: the weight of the teacher's loss
    teacher_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the teacher's normalisation
    teacher_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ema_decay: float = 0.0  # 0: no EMA
    ema_every_steps: int = 1
    ema_warmup: bool = False

    @classmethod
    def from_config(cls, c: Any) -> StepSpec:
        prep = preprocessing_of(c)
        return cls(
            num_classes=int(c.num_classes), dtype=str(c.dtype), mean=prep.mean, std=prep.std,
            label_smoothing=float(c.label_smoothing_epsilon) if c.use_label_smoothing else 0.0,
            mixup_alpha=float(c.mixup_alpha) if c.use_mixup else 0.0,
            cutmix_alpha=float(c.cutmix_alpha), mixup_prob=float(c.mixup_prob),
            mixup_cutmix_switch_prob=float(c.mixup_cutmix_switch_prob),
            erasing=float(c.random_erasing), erasing_mode=str(c.random_erasing_mode),
            erasing_count=int(c.random_erasing_count),
            erasing_area=tuple(float(a) for a in c.random_erasing_area),
            erasing_aspect=tuple(float(a) for a in c.random_erasing_aspect),
            auto_augment=str(c.auto_augment) if c.auto_augment_on == "device" else "",
            fill=_fill(prep.mean), eval_flip=bool(c.eval_flip),
            bn_stats=str(c.bn_stats), bn_impl=str(c.bn_impl),
            l2_loss=float(c.l2_decay) if c.l2_decay_mode == "loss" else 0.0,
            l2_exclude_bn_bias=bool(c.l2_decay_exclude_bn_bias),
            freeze_backbone=bool(c.freeze_backbone),
            grad_accum_steps=int(c.grad_accum_steps),
            distill_loss=str(c.distill_loss) if c.distill_teacher else "",
            distill_temperature=float(c.distill_temperature),
            distill_alpha=float(c.distill_alpha),
            teacher_mean=_teacher_cfg(c).mean if c.distill_teacher else (0.0, 0.0, 0.0),
            teacher_std=_teacher_cfg(c).std if c.distill_teacher else (1.0, 1.0, 1.0),
            ema_decay=float(c.ema_decay),
            ema_every_steps=int(c.ema_every_steps), ema_warmup=bool(c.ema_warmup))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which examples: where the data set is and how it is laid out (``flaxcls.data.sources``)."""

    data_source: str  # auto, list, folder, records or tfds
    data_dir: str
    tfds_name: str
    train_list: str
    val_list: str
    train_split: str
    eval_split: str
    num_classes: int
    total_images: int  # > 0: the epoch length, whatever is on disk
    unlabeled: str = ""  # images without labels added to the train split (a teacher's only)

    @classmethod
    def from_config(cls, c: Any) -> DataSpec:
        return cls(str(c.data_source), str(c.data_dir or ""), str(c.tfds_name),
                   str(c.train_list), str(c.val_list), str(c.train_split), str(c.eval_split),
                   int(c.num_classes), int(c.total_images), str(c.distill_unlabeled))


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How examples become uint8 batches (``flaxcls.data.pipeline``): the train augmentation,
    the eval transform and the reader's settings."""

    model: str  # named in warnings about the data
    crop_size: int  # train: the random-resized crop's size
    eval_crop_size: int  # eval: the centre crop's
    resize_short_size: int  # eval: the shorter side's before the centre crop
    interpolation: str
    lower_scale: float
    lower_ratio: float
    upper_ratio: float
    random_flip: bool
    rotate_degrees: float  # 0: no rotation
    jitter: tuple[float, float, float, float] | None  # brightness, contrast, saturation, hue
    reader_thread: int  # 0: every CPU the process may use
    reader_buf_size: int
    cache_eval: bool
    seed: int
    repeated_augmentation: int = 1  # each image this many times per epoch, apart (1: off)
    auto_augment: str = ""  # the policy after the flip ("": none, or on the device)
    fill: tuple[int, int, int] = (0, 0, 0)  # RGB of what its geometric ops uncover: the mean
    device_resident: bool = False  # the train split decoded once and kept on the devices
    crop_padding: int = 0  # device-resident train: random crop from the image padded this much
    device_data_cache: str = ""  # where the decoded split is cached ("": the workdir's)

    @classmethod
    def from_config(cls, c: Any) -> InputSpec:
        prep = preprocessing_of(c)
        jitter = ((float(c.brightness), float(c.contrast), float(c.saturation), float(c.hue))
                  if c.color_jitter else None)
        return cls(
            model=str(c.model), crop_size=train_crop_of(c), eval_crop_size=prep.crop_size,
            resize_short_size=prep.resize_short_size, interpolation=prep.interpolation,
            lower_scale=float(c.lower_scale), lower_ratio=float(c.lower_ratio),
            upper_ratio=float(c.upper_ratio), random_flip=bool(c.random_flip),
            rotate_degrees=float(c.rotate_degrees) if c.rotate else 0.0, jitter=jitter,
            reader_thread=int(c.reader_thread), reader_buf_size=int(c.reader_buf_size),
            cache_eval=bool(c.cache_eval), seed=int(c.random_seed or 0),
            repeated_augmentation=max(1, int(c.repeated_augmentation)),
            auto_augment=str(c.auto_augment) if c.auto_augment_on == "host" else "",
            fill=_fill(prep.mean), device_resident=bool(c.device_resident_data),
            crop_padding=int(c.crop_padding), device_data_cache=str(c.device_data_cache))

    @classmethod
    def for_eval(cls, prep: EvalPreprocessing | dict[str, Any]) -> InputSpec:
        """An eval-only spec from preprocessing values alone (an export's ``model.json``)."""
        p = prep.to_json() if isinstance(prep, EvalPreprocessing) else prep
        return cls(model="", crop_size=int(p["crop_size"]), eval_crop_size=int(p["crop_size"]),
                   resize_short_size=int(p["resize_short_size"]),
                   interpolation=str(p["interpolation"]), lower_scale=1.0, lower_ratio=1.0,
                   upper_ratio=1.0, random_flip=False, rotate_degrees=0.0, jitter=None,
                   reader_thread=0, reader_buf_size=0, cache_eval=False, seed=0)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What the loop itself decides: batches, length, bookkeeping and where weights start."""

    batch_size: int  # global
    test_batch_size: int  # global
    num_epochs: float
    num_train_steps: int  # > 0: stop after this many steps
    seed: int
    loss_scale: float  # initial dynamic loss scale (float16 only)
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    eval_every_epochs: int
    pretrained_model: str
    checkpoint: str
    use_ema_weights: bool = True  # a checkpoint's EMA, where it has one, for a pretrained start
    distill_teacher_weights: str = ""

    @classmethod
    def from_config(cls, c: Any) -> RunSpec:
        return cls(
            batch_size=int(c.batch_size), test_batch_size=int(c.test_batch_size),
            num_epochs=float(c.num_epochs), num_train_steps=int(c.num_train_steps),
            seed=int(c.random_seed or 0), loss_scale=float(c.loss_scale),
            log_every_steps=int(c.log_every_steps),
            checkpoint_every_steps=int(c.checkpoint_every_steps),
            keep_checkpoints=int(c.keep_checkpoints), eval_every_epochs=int(c.eval_every_epochs),
            pretrained_model=str(c.pretrained_model), checkpoint=str(c.checkpoint),
            use_ema_weights=bool(c.use_ema_weights),
            distill_teacher_weights=str(c.distill_teacher_weights))


@dataclasses.dataclass(frozen=True)
class Specs:
    """Every part's spec, from one config."""

    model: ModelSpec
    optim: OptimSpec
    step: StepSpec
    data: DataSpec
    input: InputSpec
    run: RunSpec
    preprocessing: EvalPreprocessing
    teacher: ModelSpec | None = None  # distillation's teacher (config.distill_teacher)

    @classmethod
    def from_config(cls, c: Any) -> Specs:
        """The specs of a config as it stands (no validation, nothing filled in)."""
        teacher = (ModelSpec(str(c.distill_teacher), int(c.num_classes), str(c.dtype), False)
                   if c.distill_teacher else None)
        return cls(ModelSpec.from_config(c), OptimSpec.from_config(c), StepSpec.from_config(c),
                   DataSpec.from_config(c), InputSpec.from_config(c), RunSpec.from_config(c),
                   preprocessing_of(c), teacher)


def resolve(config: Any, *, need_data: bool = True) -> Specs:
    """The edge: fills the preprocessing fields the config leaves unset from the model's
    ModelCfg (in place, so config.json records what ran), validates every field (ConfigError
    naming the first wrong one) and returns the specs. ``need_data=False`` (infer, export)
    accepts a config without a data set."""
    resolve_preprocessing(config)
    validate(config, need_data=need_data)
    return Specs.from_config(config)
