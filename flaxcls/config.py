"""The training configuration: every field with its default, and the checks run before a job starts.

Field names follow the 2019 PaddleCV ``train.py`` flags where they still make sense
(``class_dim`` became ``num_classes``, ``model_save_dir`` became ``--workdir``).
"""

from __future__ import annotations

import numbers

import ml_collections
from ml_collections.config_dict import placeholder

LR_STRATEGIES = (
    "piecewise_decay",
    "cosine_decay",
    "linear_decay",
    "exponential_decay",
    "constant",
)
DTYPES = ("float32", "bfloat16", "float16")
L2_DECAY_MODES = ("optimizer", "loss")
BN_STATS = ("global", "device")
OPTIMIZERS = ("momentum", "nesterov", "adamw", "lamb", "lars", "rmsprop_tf", "lion")
# Optimizers whose decay is the decoupled weight_decay only: Paddle's coupled l2_decay (in the
# gradient, then scaled by the adaptive terms) is refused for them.
DECOUPLED_ONLY = ("adamw", "lamb", "lars", "lion")
BN_IMPLS = ("flax", "fused")
DATA_SOURCES = ("auto", "list", "folder", "records", "tfds")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos3", "lanczos5")
# cv2 codes accepted by the original --interpolation flag.
CV2_INTERPOLATIONS = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos5"}
MODES = ("train", "eval", "infer", "export")
EXPORT_INPUTS = ("uint8", "float32")
BUILTIN_DATASETS = ("", "digits")


def default_config() -> ml_collections.ConfigDict:
    """All fields with their defaults. Recipes in configs/ start from this and change a few."""
    c = ml_collections.ConfigDict()

    # --- model
    c.model = "ResNet50"
    c.num_classes = 1000  # the original class_dim
    c.dtype = "float32"  # compute dtype; parameters stay float32
    # ResNet/ResNeXt/SE-ResNeXt: the stride-2 stem conv computed on the space-to-depth image
    # (same parameters and outputs; faster on GPUs)
    c.stem_space_to_depth = False
    # Stochastic depth of the last residual block, linear in depth from 0 (families with
    # residual blocks; 0: off, always off at eval)
    c.drop_path_rate = 0.0
    # Dropout of the pooled features before the classifier, in training (inverted dropout;
    # the models whose 2019 head had none: 0 is the released design)
    c.dropout_rate = 0.0
    # BatchNorm statistics while training: "global" = over the whole global batch (results do
    # not depend on the device count; one small all-reduce per BN layer), "device" = over each
    # device's share, as the 2019 multi-GPU runs did (one fused all-reduce per step)
    c.bn_stats = "global"
    # "flax": flax.linen.BatchNorm's autodiff; "fused": the same BatchNorm with a hand-written
    # backward that keeps only the bf16/fp16 input for it (flaxcls.models.batchnorm)
    c.bn_impl = "flax"
    c.pretrained_model = ""  # weights to start from (Orbax checkpoint dir)
    c.checkpoint = ""  # resume from this checkpoint dir while the workdir has none of its own
    # fine-tuning from pretrained_model (another num_classes re-initialises the classifier head)
    c.freeze_backbone = False  # train only the head (the tensors whose shape follows num_classes)
    c.backbone_lr_mult = 1.0  # learning-rate factor for everything but the head

    # --- data
    c.data_dir = ""
    c.builtin_dataset = ""  # "digits": write scikit-learn's digits as JPEGs under the workdir
    # auto: list files if present, else class folders, else record shards (flaxcls.data.rewrite)
    c.data_source = "auto"
    c.tfds_name = ""  # e.g. "imagenet2012"; prepared from a manual_dir, never downloaded
    c.train_list = "train_list.txt"
    c.val_list = "val_list.txt"
    c.train_split = "train"
    c.eval_split = "val"
    c.total_images = 0  # 0: counted from the data set
    # Eval preprocessing (and the train crop): crop_size, resize_short_size, interpolation,
    # image_mean and image_std start unset (None) and then take the model's ModelCfg values
    # (flaxcls.preprocessing.resolve_preprocessing); a value set here, in a recipe or with
    # --config.crop_size=... is used as set; --config.crop_size=None unsets it again.
    c.image_shape = ()  # C, H, W as in the original flag; when set, H is the crop_size
    c.crop_size = placeholder(int)  # train: random-resized crop; eval: centre crop
    c.resize_short_size = placeholder(int)  # eval: the shorter side is resized to this first
    # Test-time resolution (FixRes, torchvision's recipes): an eval centre crop other than the
    # train crop (0: crop_size) and its resize (0: resize_short_size; with eval_crop_size set,
    # at the model's crop fraction, 256/224 for most). Eval, infer and export use them.
    c.eval_crop_size = 0
    c.eval_resize_short_size = 0
    c.eval_flip = False  # eval: average the logits of each image and its mirror
    c.lower_scale = 0.08
    c.lower_ratio = 3.0 / 4.0
    c.upper_ratio = 4.0 / 3.0
    c.random_flip = True
    c.rotate = False
    c.rotate_degrees = 10.0
    c.color_jitter = False
    c.brightness = 0.4
    c.contrast = 0.4
    c.saturation = 0.4
    c.hue = 0.0
    # Per-image policy on the train crop, in tf.data after the flip (timm's names): "" (off),
    # "rand-m9-n2-mstd0.5" (RandAugment, timm's grammar), "autoaug" (AutoAugment's ImageNet
    # policy) or "trivial" (TrivialAugment wide); flaxcls/data/autoaugment.py has the ops.
    c.auto_augment = ""
    # Where it runs: "host" (tf.data, per image on the CPU) or "device" (in the jitted step on
    # the uint8 batch, per example; flaxcls/train/autoaugment_device.py)
    c.auto_augment_on = "host"
    c.interpolation = placeholder(str)  # a name (INTERPOLATIONS) or a cv2 code "0"-"4"
    c.image_mean = placeholder(tuple)  # RGB on the 0-1 scale, e.g. (0.485, 0.456, 0.406)
    c.image_std = placeholder(tuple)
    c.reader_thread = 0  # tf.data parallelism; 0 = autotune
    c.reader_buf_size = 8192  # shuffle buffer (examples)
    c.cache_eval = False
    # Small data sets: the train split decoded once (at the train crop, centre-cropped at the
    # model's crop fraction), cached in device_data_cache ("": <workdir>/device_data) and kept
    # on every device; the step draws, crops (crop_padding) and flips its batches itself. List
    # files or class folders; refused with the sizes when the split is over 40% of a device.
    c.device_resident_data = False
    c.crop_padding = 4  # device-resident train: random crop of the image zero-padded this much
    c.device_data_cache = ""

    # --- optimisation
    c.num_epochs = 120.0  # may be fractional (9.9): round(num_epochs * steps per epoch) steps
    c.num_train_steps = -1  # >0 stops after this many steps (tests, benchmarks)
    c.batch_size = 256  # global, all devices and hosts
    c.test_batch_size = 256  # global
    c.lr_strategy = "piecewise_decay"
    c.lr = 0.1
    c.lr_base_batch_size = 0  # >0: lr is per this many images and scales linearly
    c.warm_up_epochs = 0.0  # linear warm-up from 0 before any lr_strategy
    c.step_epochs = (30, 60, 90)
    c.decay_rate = 0.1  # piecewise factor; per decay_epochs for exponential_decay
    c.decay_epochs = 2.4  # exponential_decay period
    c.end_lr = 0.0  # linear_decay target
    c.l2_decay = 1e-4
    c.l2_decay_mode = "optimizer"  # or "loss" (same gradient; see optim.make_optimizer)
    c.l2_decay_exclude_bn_bias = False  # True: L2 only on weights with ndim > 1 (not BN, biases)
    c.momentum_rate = 0.9  # momentum, nesterov, lars and rmsprop_tf
    c.nesterov = False
    # The update rule (flaxcls.train.optim._direction): momentum (the 2019 recipes'), nesterov,
    # adamw, lamb, lars, rmsprop_tf (TensorFlow's, as MobileNet/EfficientNet trained) or lion
    c.optimizer = "momentum"
    # Decoupled weight decay (p -= lr * weight_decay * p beside the update, AdamW's and SGDW's);
    # by default not on BatchNorm scales/offsets and biases (weight_decay_exclude_bn_bias)
    c.weight_decay = 0.0
    c.weight_decay_exclude_bn_bias = True
    c.clip_grad_norm = 0.0  # > 0: the gradient is scaled down to this global norm first
    c.opt_betas = placeholder(tuple)  # adamw, lamb, lion: (beta1, beta2); unset: the optimizer's
    c.opt_eps = placeholder(float)  # adamw, lamb, rmsprop_tf; unset: 1e-8, 1e-6, 1e-3
    c.rmsprop_decay = 0.9  # rmsprop_tf: decay of the mean square
    c.lars_trust_coefficient = 0.001  # lars: the trust ratio's coefficient
    # Gradient accumulation: each step's batch as this many micro-batches in turn inside the
    # jitted step (a scan), gradients and BatchNorm statistics averaged; the update is the one
    # step of the whole batch, BatchNorm statistics per micro-batch; must divide the batch
    # of each device
    c.grad_accum_steps = 1
    # Knowledge distillation: a teacher (a registry name) with its weights (a checkpoint of
    # ours or a converted release, which must have num_classes outputs) runs in eval mode inside
    # the train step on the student's augmented batch; never trained, never saved with the
    # student. distill_loss: "kl" (the student against the teacher's softmax at
    # distill_temperature), "js" (Jensen-Shannon, SSLD's) or "soft_hard"
    # (distill_alpha * kl + (1 - distill_alpha) * cross-entropy with the labels)
    c.distill_teacher = ""
    c.distill_teacher_weights = ""
    c.distill_loss = "kl"
    c.distill_temperature = 1.0
    c.distill_alpha = 0.5
    # Images without labels as extra training data (SSLD): a folder (every image under it) or
    # a list file (one path per line, relative to the list's folder); needs a teacher, whose
    # loss is the only one on them; list files and class folders only
    c.distill_unlabeled = ""
    # Exponential moving average of the weights and BatchNorm statistics, kept on the device and
    # in the checkpoint (0: off): ema = d * ema + (1 - d) * weights every ema_every_steps steps;
    # with ema_warmup, d = min(ema_decay, (1 + k) / (10 + k)) at the k-th update (TF's rule)
    c.ema_decay = 0.0
    c.ema_every_steps = 1
    c.ema_warmup = False
    # Which weights eval, infer, export and a pretrained start take from a checkpoint that has
    # an EMA: the EMA (default) or the raw weights; training evaluates both
    c.use_ema_weights = True
    c.use_mixup = False
    c.mixup_alpha = 0.2
    c.cutmix_alpha = 0.0  # > 0: CutMix (a box of the partner pasted; label mixed by its area)
    c.mixup_prob = 1.0  # chance that a batch is mixed at all (mixup or CutMix)
    c.mixup_cutmix_switch_prob = 0.5  # with both on: chance that a mixed batch uses CutMix
    c.repeated_augmentation = 0  # N >= 2: each image N times per epoch, each copy augmented apart
    c.random_erasing = 0.0  # chance per image of Random Erasing (on device, after normalising)
    c.random_erasing_mode = "pixel"  # box filled with per-pixel normal noise, or "const" (mean)
    c.random_erasing_count = 1  # up to this many boxes per erased image
    c.random_erasing_area = (0.02, 1 / 3)  # box area, fraction of the image
    c.random_erasing_aspect = (0.3, 1 / 0.3)  # box height / width, log-uniform
    c.use_label_smoothing = False
    c.label_smoothing_epsilon = 0.1
    c.random_seed = 0
    c.loss_scale = 32768.0  # initial dynamic loss scale (float16 only)

    # --- bookkeeping
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_every_epochs = 1
    c.compilation_cache = True

    # --- infer / export (--mode=infer, --mode=export)
    c.infer_path = ""  # an image, a folder of images, or a list file (one path per line)
    c.topk = 5
    c.label_path = ""  # readable class names, one per line in class-index order
    c.features = False  # infer writes pooled features instead of top-k classes
    # infer/export: each BatchNorm that follows a convolution is folded into it (the original's
    # inference "fuse" options; same outputs up to float rounding, one op per layer fewer)
    c.fold_bn = True
    c.export_input = "uint8"  # or "float32": already normalised ((x/255 - mean) / std)
    c.export_savedmodel = False  # also a TensorFlow SavedModel (jax2tf) for TF Serving
    return c


class ConfigError(ValueError):
    """A configuration value a user set is wrong; the message names the field."""


def split_none_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its ``--config.<field>=None`` arguments, and those fields in order.

    Flag parsing types a value by the field's type, so ``None`` cannot reach a field that
    takes an int or a tuple; launch.py takes these out first and sets them with
    ``apply_none_overrides`` once the config is loaded."""
    kept, fields = [], []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if sep and name.startswith("--config.") and value.strip().lower() == "none":
            fields.append(name[len("--config."):])
        else:
            kept.append(arg)
    return kept, fields


def apply_none_overrides(c: ml_collections.ConfigDict, fields: list[str]) -> None:
    """Sets each (dotted) field to None; only fields that may be unset (placeholders such as
    the preprocessing fields) accept it, any other raises ConfigError naming the field."""
    for field in fields:
        *parents, leaf = field.split(".")
        node = c
        for i, part in enumerate(parents):
            if part not in node:
                raise ConfigError(f"config.{field}=None: no field config.{'.'.join(parents[:i + 1])}")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(f"config.{field}=None: no such field")
        # Fields that may be None were declared as placeholders, which ConfigDict keeps as
        # FieldReferences; a plain field would take None silently and fail much later.
        if not isinstance(node._fields.get(leaf), ml_collections.FieldReference):
            raise ConfigError(
                f"config.{field}=None: this field is of type {type(node[leaf]).__name__} and cannot "
                "be unset (only fields that start unset can, such as crop_size, "
                "resize_short_size, interpolation, image_mean and image_std)")
        node[leaf] = None


def validate(c: ml_collections.ConfigDict, need_data: bool = True) -> None:
    """Checks that need no data or devices. Raises ConfigError naming the field.

    ``need_data=False`` (infer, export) accepts a config without a data set.
    """

    def need(cond: bool, field: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config.{field}={getattr(c, field)!r}: {msg}")

    need(c.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
    need(c.l2_decay_mode in L2_DECAY_MODES, "l2_decay_mode", f"must be one of {L2_DECAY_MODES}")
    need(c.bn_stats in BN_STATS, "bn_stats", f"must be one of {BN_STATS}")
    need(c.bn_impl in BN_IMPLS, "bn_impl", f"must be one of {BN_IMPLS}")
    _validate_optimizer(c, need)
    need(c.topk >= 1, "topk", "must be >= 1")
    need(c.backbone_lr_mult >= 0, "backbone_lr_mult", "must be >= 0")
    need(c.export_input in EXPORT_INPUTS, "export_input", f"must be one of {EXPORT_INPUTS}")
    need(split_lr_strategy(c.lr_strategy)[0] in LR_STRATEGIES, "lr_strategy",
         f"must be one of {LR_STRATEGIES} (optionally with '_warmup' or '_with_warmup')")
    need(c.data_source in DATA_SOURCES, "data_source", f"must be one of {DATA_SOURCES}")
    need(c.data_source != "records" or bool(c.data_dir) or not need_data, "data_source",
         "needs config.data_dir: the folder written by `python -m flaxcls.data.rewrite`")
    need(c.builtin_dataset in BUILTIN_DATASETS, "builtin_dataset",
         f"must be one of {BUILTIN_DATASETS}")
    need(bool(c.data_dir or c.builtin_dataset or c.tfds_name) or not need_data, "data_dir",
         "is empty: set --config.data_dir=PATH (list files or class folders) or tfds_name")
    need(c.num_classes >= 1, "num_classes", "must be >= 1")
    need(c.batch_size >= 1, "batch_size", "must be >= 1")
    need(c.test_batch_size >= 1, "test_batch_size", "must be >= 1")
    need(c.lr >= 0, "lr", "must be >= 0")
    need(0 < c.lower_scale <= 1, "lower_scale", "must be in (0, 1]")
    need(0 < c.lower_ratio <= c.upper_ratio, "lower_ratio", "must be > 0 and <= upper_ratio")
    validate_preprocessing(c)
    need(all(b > a for a, b in zip(c.step_epochs, c.step_epochs[1:])), "step_epochs",
         "must be increasing")
    need(c.mixup_alpha > 0 or not c.use_mixup, "mixup_alpha", "must be > 0 with use_mixup")
    need(c.cutmix_alpha >= 0, "cutmix_alpha", "must be >= 0 (0: no CutMix)")
    need(0 <= c.mixup_prob <= 1, "mixup_prob", "must be in [0, 1]")
    need(0 <= c.mixup_cutmix_switch_prob <= 1, "mixup_cutmix_switch_prob", "must be in [0, 1]")
    need(c.repeated_augmentation >= 0, "repeated_augmentation",
         "must be >= 0 (0 or 1: off; N: each image N times)")
    need(c.repeated_augmentation <= 1 or c.data_source in ("auto", "list", "folder"),
         "repeated_augmentation", "needs list files or class folders (data_source auto, list "
         "or folder): record and TFDS streams are read in order")
    need(isinstance(c.auto_augment, str), "auto_augment", 'must be a string ("" is off)')
    if c.auto_augment:
        from flaxcls.data.augment_policy import parse

        try:
            parse(c.auto_augment)
        except ValueError as e:  # its message names the field and the grammar
            raise ConfigError(str(e)) from None
    need(c.auto_augment_on in ("host", "device"), "auto_augment_on",
         'must be "host" (tf.data on the CPU) or "device" (in the train step)')
    need(c.crop_padding >= 0, "crop_padding", "must be >= 0 (0: no random crop)")
    if c.device_resident_data:
        need(c.data_source in ("auto", "list", "folder"), "device_resident_data",
             "needs list files or class folders (data_source auto, list or folder)")
        need(c.repeated_augmentation <= 1, "device_resident_data",
             "draws its batches on the device: set repeated_augmentation=0")
        need(not c.auto_augment or c.auto_augment_on == "device", "device_resident_data",
             "has no host pipeline: set auto_augment_on=device for the policy")
    need(0 <= c.random_erasing <= 1, "random_erasing", "must be a probability in [0, 1]")
    need(c.random_erasing_mode in ("pixel", "const"), "random_erasing_mode",
         "must be 'pixel' (normal noise) or 'const' (the mean colour)")
    need(c.random_erasing_count >= 1, "random_erasing_count", "must be >= 1")
    area, aspect = tuple(c.random_erasing_area), tuple(c.random_erasing_aspect)
    need(len(area) == 2 and 0 < area[0] <= area[1] <= 1, "random_erasing_area",
         "must be (min, max) with 0 < min <= max <= 1")
    need(len(aspect) == 2 and 0 < aspect[0] <= aspect[1], "random_erasing_aspect",
         "must be (min, max) with 0 < min <= max")
    need(0 <= c.label_smoothing_epsilon < 1, "label_smoothing_epsilon", "must be in [0, 1)")
    need(c.log_every_steps >= 1, "log_every_steps", "must be >= 1")
    need(c.checkpoint_every_steps >= 1, "checkpoint_every_steps", "must be >= 1")
    need(c.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
    need(c.warm_up_epochs >= 0, "warm_up_epochs", "must be >= 0")
    need(c.warm_up_epochs > 0 or not split_lr_strategy(c.lr_strategy)[1], "warm_up_epochs",
         f"must be > 0 with lr_strategy={c.lr_strategy!r} (the 2019 recipes used 5)")
    need(c.warm_up_epochs == 0 or c.warm_up_epochs < c.num_epochs, "warm_up_epochs",
         f"warm-up must end before num_epochs={c.num_epochs}")
    need(c.decay_epochs > 0 or split_lr_strategy(c.lr_strategy)[0] != "exponential_decay",
         "decay_epochs", "must be > 0 for exponential_decay")
    need(c.loss_scale > 0, "loss_scale", "must be > 0")
    need(c.eval_every_epochs >= 1, "eval_every_epochs", "must be >= 1")
    _validate_model_options(c)


def _validate_optimizer(c: ml_collections.ConfigDict, need) -> None:
    """The optimizer and its settings (``flaxcls.train.optim``)."""
    need(c.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
    need(c.l2_decay >= 0, "l2_decay", "must be >= 0")
    need(c.l2_decay == 0 or c.optimizer not in DECOUPLED_ONLY, "l2_decay",
         f"optimizer={c.optimizer!r} takes the decoupled weight_decay only; set "
         "--config.l2_decay=0 and --config.weight_decay=... instead")
    need(c.weight_decay >= 0, "weight_decay", "must be >= 0 (0: none)")
    need(c.clip_grad_norm >= 0, "clip_grad_norm", "must be >= 0 (0: no clipping)")
    need(0 <= c.momentum_rate < 1, "momentum_rate", "must be in [0, 1)")
    need(not c.nesterov or c.optimizer in ("momentum", "nesterov", "lars"), "nesterov",
         f"applies to optimizer momentum or lars, not {c.optimizer!r}")
    betas = c.opt_betas
    need(betas is None or (len(betas) == 2 and all(
        isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)), "opt_betas",
         "must be (beta1, beta2), each in [0, 1) (or unset: the optimizer's)")
    need(c.opt_eps is None or c.opt_eps >= 0, "opt_eps", "must be >= 0 (or unset)")
    need(0 <= c.rmsprop_decay < 1, "rmsprop_decay", "must be in [0, 1)")
    need(c.lars_trust_coefficient > 0, "lars_trust_coefficient", "must be > 0")
    need(_is_int(c.grad_accum_steps) and c.grad_accum_steps >= 1, "grad_accum_steps",
         "must be a whole number >= 1 (1: no accumulation)")
    _validate_distillation(c, need)
    need(0 <= c.ema_decay < 1, "ema_decay", "must be in [0, 1) (0: no EMA; 0.9998 is common)")
    need(_is_int(c.ema_every_steps) and c.ema_every_steps >= 1, "ema_every_steps",
         "must be a whole number >= 1")


DISTILL_LOSSES = ("kl", "js", "soft_hard")


def _validate_distillation(c: ml_collections.ConfigDict, need) -> None:
    """The teacher, its weights and the distillation loss."""
    teacher = c.distill_teacher
    need(bool(teacher) or not c.distill_teacher_weights, "distill_teacher",
         "is empty but distill_teacher_weights is set: name the teacher's model")
    need(bool(teacher) or not c.distill_unlabeled, "distill_teacher",
         "is empty but distill_unlabeled is set: images without labels need a teacher")
    need(c.distill_loss in DISTILL_LOSSES, "distill_loss", f"must be one of {DISTILL_LOSSES}")
    need(c.distill_temperature > 0, "distill_temperature", "must be > 0")
    need(0 <= c.distill_alpha <= 1, "distill_alpha", "must be in [0, 1]")
    if not teacher:
        return
    from flaxcls.registry import UnknownModelError, create_model

    try:
        create_model(teacher)
    except UnknownModelError as e:
        raise ConfigError(f"config.distill_teacher={teacher!r}: {e}") from None
    need(bool(c.distill_teacher_weights), "distill_teacher_weights",
         f"is empty: the teacher {teacher} needs trained weights (a checkpoint or a converted "
         "release)")
    need(not c.distill_unlabeled or c.data_source in ("auto", "list", "folder"),
         "distill_unlabeled", "needs list files or class folders (data_source auto, list or "
         "folder)")


def _validate_model_options(c: ml_collections.ConfigDict) -> None:
    """The options that depend on the model: its name, a stem that space-to-depth fits and
    residual blocks for stochastic depth."""
    from flaxcls.registry import create_model

    if not 0 <= c.drop_path_rate < 1:
        raise ConfigError(f"config.drop_path_rate={c.drop_path_rate}: must be in [0, 1)")
    if c.drop_path_rate > 0:
        create_model(c.model)  # UnknownModelError first, for a typo
        try:
            create_model(c.model, drop_path_rate=c.drop_path_rate)
        except ValueError:  # the registry: "has no field(s) drop_path_rate"
            raise ConfigError(
                f"config.drop_path_rate={c.drop_path_rate}: {c.model} has no residual blocks "
                "with stochastic depth; set it to 0 for this model") from None
    eval_crop = getattr(c, "eval_crop_size", 0)
    if eval_crop and c.crop_size is not None and eval_crop != c.crop_size:
        _need_any_input_size(c.model, int(c.crop_size), int(eval_crop))
    if not 0 <= c.dropout_rate < 1:
        raise ConfigError(f"config.dropout_rate={c.dropout_rate}: must be in [0, 1)")
    if c.dropout_rate > 0:
        model = create_model(c.model)  # UnknownModelError first, for a typo
        if not hasattr(model, "classifier_dropout") or getattr(model, "head_dropout", 0):
            own = getattr(model, "head_dropout", None) or getattr(model, "dropout_rate", None)
            raise ConfigError(
                f"config.dropout_rate={c.dropout_rate}: {c.model}'s head has its own dropout "
                f"({own}, as released, scaled at inference); dropout_rate adds one only to "
                "heads that had none: set it to 0 for this model")
    if not c.stem_space_to_depth:
        create_model(c.model)  # UnknownModelError, with close names, for a typo
        return
    try:
        model = create_model(c.model, stem_space_to_depth=True)
    except ValueError as e:
        raise ConfigError(f"config.stem_space_to_depth=True: {e}") from e
    stem = getattr(model, "stem", None)
    if stem not in ("plain", "deep"):
        raise ConfigError(
            f"config.stem_space_to_depth=True: {c.model} has no stride-2 stem conv "
            f"(stem={stem!r}); set it to False for this model")


def _need_any_input_size(model_name: str, train: int, test: int) -> None:
    """A model whose parameters depend on the input size (AlexNet's and VGG's flattened fc)
    cannot be evaluated at another crop than it trains at."""
    import jax
    import numpy as np

    from flaxcls.registry import create_model

    model = create_model(model_name)

    def shapes(size: int):
        x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
        return jax.tree.map(lambda a: a.shape, jax.eval_shape(model.init, jax.random.key(0), x))

    if shapes(train) != shapes(test):
        raise ConfigError(
            f"config.eval_crop_size={test}: {model_name}'s parameters depend on the input size "
            f"(a flattened fc), so it evaluates at its train crop {train} only; set it to 0")


def validate_preprocessing(c: ml_collections.ConfigDict) -> None:
    """Checks the preprocessing fields that are set; unset (None) ones are the model's and pass.

    Run by `validate` and, before it fills anything, by `resolve_preprocessing`. Raises
    ConfigError naming the field.
    """

    def need(cond: bool, field: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config.{field}={getattr(c, field, None)!r}: {msg}")

    crop, short = getattr(c, "crop_size", None), getattr(c, "resize_short_size", None)
    for field, value in (("crop_size", crop), ("resize_short_size", short)):
        need(value is None or (_is_int(value) and value >= 1), field,
             "must be a whole number >= 1 (or left unset: the model's)")
    if crop is not None and short is not None:
        need(short >= crop, "resize_short_size", f"must be >= crop_size={crop}")
    eval_crop = getattr(c, "eval_crop_size", 0)
    eval_short = getattr(c, "eval_resize_short_size", 0)
    for field, value in (("eval_crop_size", eval_crop),
                         ("eval_resize_short_size", eval_short)):
        need(_is_int(value) and value >= 0, field,
             "must be a whole number >= 0 (0: the train crop's)")
    which, size = ("eval_crop_size", eval_crop) if eval_crop else ("crop_size", crop)
    need(not eval_short or size is None or eval_short >= size, "eval_resize_short_size",
         f"must be >= {which}={size}")
    shape = [_whole(v) for v in getattr(c, "image_shape", None) or ()]
    if shape:
        need(len(shape) == 3 and shape[0] == 3, "image_shape",
             "must be (3, H, W): images are decoded as RGB")
        need(shape[1] is not None and shape[1] == shape[2] and shape[1] >= 1, "image_shape",
             "H and W must be equal and >= 1 (H is the crop_size; or leave image_shape empty)")
    interpolation = getattr(c, "interpolation", None)
    need(interpolation is None or interpolation_name(interpolation) in INTERPOLATIONS,
         "interpolation",
         f"must be one of {INTERPOLATIONS} or a cv2 code {sorted(CV2_INTERPOLATIONS)}")
    mean, std = getattr(c, "image_mean", None), getattr(c, "image_std", None)
    need(mean is None or _rgb(mean), "image_mean", "needs 3 numbers (RGB, 0-1 scale)")
    need(std is None or (_rgb(std) and all(v > 0 for v in std)), "image_std",
         "needs 3 positive numbers (RGB, 0-1 scale)")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _whole(value) -> int | None:
    """An image_shape entry as an int (the original flag's "3,224,224" strings included)."""
    try:
        return int(value) if float(value) == int(value) else None
    except (TypeError, ValueError):
        return None


def _rgb(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value))


def split_lr_strategy(name: str) -> tuple[str, bool]:
    """'cosine_decay_warmup' (or the original 'cosine_decay_with_warmup') -> ('cosine_decay', True)."""
    for suffix in ("_with_warmup", "_warmup"):
        if name.endswith(suffix):
            return name.removesuffix(suffix), True
    return name, False


def interpolation_name(value: str | int) -> str:
    """Accepts a method name or the original cv2 integer code."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return CV2_INTERPOLATIONS.get(int(value), f"unknown cv2 code {value}")
    return str(value).lower()
