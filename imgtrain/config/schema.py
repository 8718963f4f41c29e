"""The config schema: one dataclass per section (data, model, task, optim, sched, trainer, dist, output)
under Config, with each key's type, default and meaning, the closed choices (CHOICES), and ConfigError.

`_volatile` and `_added` mark how a field enters the config hash (dump.py). Checks that belong to one
section live on it (ModelConfig.__post_init__, OptimConfig.optimizer_args); checks across sections and
ranges are in validate.py.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

REQUIRED = "???"  # a default that must be replaced by a file or an override


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key and its origin."""


def _unknown(key: str, candidates, where: str) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    prefix = key[: len(key) - len(name)]
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(sorted(candidates))}"
    return ConfigError(f"unknown config key '{key}' [{where}]{hint}")


def _volatile(default, **kw):
    """A field that does not change results (output.*, data.num_workers, logging and checkpoint cadence,
    attempt limits): left out of the hash. data.path and model.pretrained_path are not volatile: hashed."""
    return field(default=default, metadata={"volatile": True}, **kw)


def _added(default, **kw):
    """A key added after runs exist: left out of the hash while it holds its default, so adding it keeps
    every existing config's hash (and run id, so earlier runs still resume). Use it for every new key."""
    return field(default=default, metadata={"hash_if_set": True}, **kw)


@dataclass
class DataConfig:
    path: str = REQUIRED  # shard data set directory (holds manifest.json)
    batch_size: int = 64  # per rank; with global_batch: the largest micro-batch a rank runs at once
    # samples per optimizer step over all ranks, fixed whatever the world size (issue 21): each rank runs
    # global_batch / world samples per step in micro-batches of at most batch_size (trainer.grad_accum is
    # derived), so a run resumed on other GPUs sees the same global batches and LR schedule. None: batch_size
    # x world x trainer.grad_accum, which changes with the world size
    global_batch: Optional[int] = _added(None)
    eval_batch_size: Optional[int] = None  # per rank; default batch_size
    num_workers: int = _volatile(2)
    img_size: int = 224
    train_split: str = "train"
    val_split: Optional[str] = "val"  # None: no validation
    test_split: Optional[str] = "test"  # None: no test at the end
    shuffle_buffer: int = 1000  # samples held by each loader for the in-window shuffle
    in_chans: int = 3  # grey images are converted to this many channels
    mean: Optional[list[float]] = None  # default: model's pretrained config, else the manifest's
    std: Optional[list[float]] = None
    # timm augmentation (timm.data.create_transform); eval uses resize + centre crop
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333333333333])
    hflip: float = 0.5
    vflip: float = 0.0
    auto_augment: Optional[str] = None  # e.g. rand-m9-mstd0.5-inc1
    color_jitter: Optional[float] = None
    re_prob: float = 0.0  # random erasing
    interpolation: str = "bicubic"
    crop_pct: Optional[float] = None
    simple_augment: bool = False  # only flip + pad-free resize (small images, digits)
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    max_bad_fraction: float = 0.01  # undecodable samples tolerated before the run stops
    jpeg_draft: bool = True  # decode large JPEGs at a reduced DCT scale that still covers the input size
    # where training JPEGs are decoded: "workers" (CPU) or "device" (nvJPEG on the GPU, for the plain
    # random-resized-crop + flip, when the workers cannot keep up; see imgtrain/data/device_decode.py)
    decode_on: str = _added("workers")
    # data.val_split equal to data.test_split (or 'test') validates on the test split: early stopping, the monitor
    # and the best checkpoint then select on test data, so the test result is no longer held out (what S004 did).
    # A config error unless this is true; when true the trainer warns at start and run.json records it.
    select_on_test: bool = _added(False)
    # random rotation in [-rotate, rotate] degrees and shear in [-shear, shear] degrees of each training image,
    # before it is cropped (torchvision's RandomAffine; the uncovered corners are black). Keras's
    # RandomRotation(f) turns up to f x 360 degrees; ImageDataGenerator's shear_range is in degrees.
    rotate: float = _added(0.0)
    shear: float = _added(0.0)
    # issue 18: "memory" decodes each split once into one uint8 N x H x W x C array, memory-mapped from node-local
    # scratch ($SLURM_TMPDIR, else $TMPDIR, else /tmp) and shared by every process of the node; training batches
    # are gathered by index and augmented per batch (pad-and-crop, flip, cutout) on the training device
    # (imgtrain/data/memory.py). "auto" (the default): memory when every split the run uses fits data.cache_max_gb
    # (and the scratch folder's free space) and the training augmentation has a per-batch form, else the per-sample
    # path, with a log line saying why. "none": always the per-sample path. The hash leaves the key out at its
    # default, so a run started before "auto" became the default keeps its id (and resumes on the path auto picks).
    cache: str = _added("auto")
    cache_max_gb: float = _added(8.0)  # memory budget of the cached splits together (node-local scratch + page cache)
    # Cutout (DeVries & Taylor 2017; airbench's CIFAR-10 recipe): a square of this many pixels, centred anywhere in
    # the training image and clipped at its border, filled with the mean colour (0 after normalisation), under
    # data.simple_augment, on both data paths. timm's augmentation has random erasing instead (data.re_prob).
    cutout: int = _added(0)

    def selects_on_test(self) -> bool:
        """Validation (early stopping, monitor, best checkpoint) runs on the test split: data.val_split is
        data.test_split, or the split named test."""
        return self.val_split is not None and self.val_split in (self.test_split, "test")

    def plain_crop(self) -> bool:
        """Training augmentation is only random-resized-crop + flip: the loader's fast path, which takes
        JPEGs as arrays (data/transforms.py) or leaves them to the device (data.decode_on=device)."""
        return not (self.simple_augment or self.auto_augment or self.color_jitter or self.vflip > 0
                    or self.rotate or self.shear or self.interpolation not in ("bilinear", "bicubic"))


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm model or a local one (mlp, simple_cnn, convmixer, airbench)
    pretrained_path: Optional[str] = None  # local .pth/.safetensors; nothing downloads
    num_classes: Optional[int] = None  # default: from the data set manifest
    img_size: Optional[int] = None  # passed to models that take it (ViT)
    patch_size: Optional[int] = None
    drop_rate: float = 0.0
    drop_path_rate: Optional[float] = None
    # local nets
    depth: Optional[int] = None
    width: Optional[list[int]] = None
    dim: Optional[int] = None
    kernel_size: Optional[int] = None
    activation: Optional[str] = None
    variant: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # any other create_model argument
    # transfer learning
    freeze_backbone: bool = False  # linear probe: only the classifier trains
    unfreeze_last: int = 0  # with freeze_backbone: also train the last N blocks
    # with freeze_backbone: the backbone trains from this epoch on (0-based; epochs before it train only the
    # classifier, frozen BatchNorms in eval mode); every parameter is in the optimizer from the start
    unfreeze_at_epoch: Optional[int] = _added(None)
    reinit: list[str] = field(default_factory=list)  # name patterns re-initialised after loading
    lr_groups: dict[str, float] = field(default_factory=dict)  # name pattern -> lr multiplier
    layer_decay: Optional[float] = None  # timm layer-wise lr decay
    # how model.reinit re-initialises: "default" (each module's reset_parameters, PyTorch's init),
    # "uniform" (Torch7's reset(): weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv/linear),
    # "glorot_uniform" (Keras: Glorot-uniform kernels, zero bias)
    reinit_init: str = _added("default")
    # parameter name pattern (fnmatch, first match wins) -> weight decay for those parameters only, in place of
    # optim.weight_decay and the no-decay rule for norms/biases. Keras L2(l) adds l*||w||^2 to the loss: with
    # the coupled optimizers (sgd, adam, rmsprop) that is weight_decay = 2*l; adamw's decay is decoupled
    wd_groups: dict[str, float] = _added(dataclasses.MISSING, default_factory=dict)
    # classification head on any backbone (see imgtrain/models/heads.py). Empty head_hidden and no head_pool:
    # the model's own classifier. Otherwise a new head: [Linear(w), head_activation, Dropout(head_dropout)]
    # per hidden width w, then Linear(num_classes); Keras init (Glorot-uniform kernels, zero bias)
    head_hidden: list[int] = _added(dataclasses.MISSING, default_factory=list)
    head_activation: str = _added("relu")  # relu, gelu, tanh, sigmoid, silu, elu, leaky_relu, selu, softplus
    head_dropout: float = _added(0.0)  # after each hidden layer's activation
    # None: the backbone's own pooling (timm's forward_head(pre_logits=True), model.drop_rate applied);
    # "flatten": Keras Flatten of forward_features' final map (then model.drop_rate, then the head);
    # "avg" / "max" / "avgmax" / "catavgmax": timm's global pooling of that name
    head_pool: Optional[str] = _added(None)

    HEAD_ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "silu", "elu", "leaky_relu", "selu", "softplus")
    HEAD_POOLS = (None, "flatten", "avg", "max", "avgmax", "catavgmax")
    REINIT_INITS = ("default", "uniform", "glorot_uniform")

    def __post_init__(self):
        for key, value, allowed in (("head_activation", self.head_activation, self.HEAD_ACTIVATIONS),
                                    ("head_pool", self.head_pool, self.HEAD_POOLS),
                                    ("reinit_init", self.reinit_init, self.REINIT_INITS)):
            if value not in allowed:
                raise ConfigError(f"model.{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"model.head_dropout: a rate in [0, 1), got {self.head_dropout}")
        if any(not isinstance(w, int) or w < 1 for w in self.head_hidden):
            raise ConfigError(f"model.head_hidden: positive layer widths, got {self.head_hidden}")
        if not self.head_hidden and (self.head_dropout or self.head_activation != "relu"):
            raise ConfigError("model.head_dropout / model.head_activation apply to hidden head layers: set "
                              "model.head_hidden (dropout before the classifier alone is model.drop_rate)")


@dataclass
class TaskConfig:
    name: str = "classification"  # classification | score_distribution
    loss: str = "ce"  # ce | emd | mse
    label_smoothing: float = 0.0
    class_weights: Optional[str] = None  # None | balanced
    emd_r: int = 2
    # data set classes -> model outputs (imgtrain/tasks/class_map.py): "imagenet" keeps a 1000-way ImageNet head
    # on folders named as ImageNet classes (S002), or a JSON file; None: class i is output i
    class_map: Optional[str] = _added(None)


@dataclass
class OptimConfig:
    # any name in timm.optim.list_optimizers(), built by timm.optim.create_optimizer_v2: sgd, momentum, adam,
    # adamw, rmsprop, rmsproptf, lamb, lars, adafactor, ... Checked when the config loads.
    # sgd here is torch.optim.SGD with classical momentum (nesterov only with optim.nesterov=true: timm's own
    # 'sgd' is Nesterov); adam keeps the classic L2 penalty through weight_decay, adamw decouples it.
    name: str = "adamw"
    lr: float = 1e-3  # for the global batch given by data.batch_size x world size
    weight_decay: float = 0.05
    momentum: float = 0.9  # optimizers that take a momentum (sgd, rmsprop, lars, ...); Keras SGD / RMSprop: 0
    # Nesterov momentum: for sgd / momentum true turns it on; for other optimizers that have the option true
    # turns it on and false keeps the variant's own setting (timm's sgdw, sgdp, nlars, nesterov: on). Off when
    # momentum is 0.
    nesterov: bool = False
    # betas and eps left at these defaults leave each optimizer its own (torch Adam/AdamW: exactly these; lion,
    # adafactor, lamb, rmsproptf ... their own); any other value is passed to optimizers that take it
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    decay_norm_and_bias: bool = False
    # RMSprop's smoothing constant (Keras calls it rho; Keras default 0.9). None: the optimizer class's own
    # default: torch.optim.RMSprop 0.99 (what optim.name=rmsprop always gave), timm's RMSpropTF 0.9 (timm's
    # factory would pass 0.9 for every rmsprop*; here it does not). An error for optimizers without an alpha.
    alpha: Optional[float] = _added(None)
    # any other argument of the optimizer (e.g. {amsgrad: true}, {centered: true}, {foreach: false}); an
    # unknown one is an error naming optim.kwargs.<name>. Keys with their own optim.* key are refused here.
    kwargs: dict[str, Any] = _added(dataclasses.MISSING, default_factory=dict)

    _DEFAULT_BETAS = (0.9, 0.999)
    _DEFAULT_EPS = 1e-8
    _OWN_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "betas", "eps", "alpha", "params")

    def __post_init__(self):
        # the names the engine always knew need no timm import (4 s) to check
        if not (self.name in ("sgd", "adam", "adamw", "rmsprop") and not self.kwargs and self.alpha is None
                and len(self.betas) == 2):
            self.optimizer_args()

    def optimizer_args(self) -> dict[str, Any]:
        """Keyword arguments for timm.optim.create_optimizer_v2 (opt=name included); ConfigError if the
        name, alpha, betas or a kwargs key does not fit the optimizer."""
        import inspect

        from timm.optim import list_optimizers
        from timm.optim._optim_factory import get_optimizer_info
        known = list_optimizers()
        if self.name not in known:
            close = difflib.get_close_matches(self.name, known, n=3, cutoff=0.6)
            hint = (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close
                    else "; see timm.optim.list_optimizers()")
            raise ConfigError(f"optim.name: {self.name!r} is not an optimizer timm knows{hint}")
        info = get_optimizer_info(self.name)
        defaults = dict(info.defaults or {})
        cls = info.opt_class  # a string for apex / bitsandbytes ones (importable only with CUDA): not inspected
        params = None
        if not isinstance(cls, str):
            sig = inspect.signature(cls).parameters
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
                params = {k: p.default for k, p in sig.items() if k != "params"}
        cls_name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"

        args: dict[str, Any] = dict(opt=self.name, lr=self.lr, weight_decay=self.weight_decay)
        if info.has_momentum:
            args["momentum"] = self.momentum
        if ("nesterov" in params) if params is not None else ("nesterov" in defaults):
            # timm registers 'sgd' with nesterov=True; here sgd's Nesterov comes from optim.nesterov alone, as
            # before timm built the optimizers (torch.optim.SGD(momentum=0.9, nesterov=False) by default)
            nesterov = self.nesterov if self.name == "sgd" else self.nesterov or bool(defaults.get("nesterov"))
            if info.has_momentum and self.momentum <= 0:
                nesterov = False  # torch's SGD refuses Nesterov without momentum; Keras SGD() is plain SGD
            args["nesterov"] = nesterov
        if info.has_betas and tuple(self.betas) != self._DEFAULT_BETAS:
            if len(self.betas) != info.num_betas:
                raise ConfigError(f"optim.betas: {self.name} takes {info.num_betas} betas, got {self.betas}")
            args["betas"] = tuple(self.betas)
        if info.has_eps and self.eps != self._DEFAULT_EPS:
            args["eps"] = self.eps
        if self.alpha is not None:
            if params is not None and "alpha" not in params:
                raise ConfigError(f"optim.alpha: {self.name} ({cls_name}) has no alpha (RMSprop's smoothing "
                                  "constant, Keras's rho); set optim.alpha=null")
            args["alpha"] = self.alpha
        elif "alpha" in defaults and params is not None and "alpha" in params:
            # timm's factory passes alpha=0.9 for its rmsprop* names; None means the class's own default
            # (torch.optim.RMSprop: 0.99, as optim.name=rmsprop always gave; RMSpropTF: 0.9)
            args["alpha"] = params["alpha"]
        for k, v in self.kwargs.items():
            if k in self._OWN_KEYS:
                raise ConfigError(f"optim.kwargs.{k}: " + ("the parameter groups set it" if k == "params"
                                                           else f"set optim.{k} instead"))
            if params is not None and k not in params:
                allowed = [p for p in params if p not in self._OWN_KEYS]
                raise _unknown(f"optim.kwargs.{k}", allowed, f"{cls_name} takes no argument '{k}'")
            args[k] = v
        return args


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | step | plateau | none
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_epochs: float = 30.0  # step: epochs between decays
    decay_rate: float = 0.1
    patience_epochs: int = 5  # plateau


@dataclass
class TrainerConfig:
    epochs: int = 10
    max_steps: Optional[int] = None  # stop after this many optimizer steps
    seed: int = 0
    deterministic: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16 (AMP on GPU)
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    ema_decay: Optional[float] = None
    channels_last: bool = False
    compile: bool = False
    ckpt_every_steps: Optional[int] = _volatile(None)
    ckpt_every_minutes: Optional[float] = _volatile(None)
    keep_top_k: int = _volatile(0)
    monitor: str = "auto"  # split/metric; auto: val/acc1 (classification), val/emd (score_distribution)
    monitor_mode: str = "auto"  # auto | max | min
    patience: Optional[int] = None  # early stopping in evaluations without improvement
    min_delta: float = 0.0
    eval_every_epochs: int = 1
    log_every_steps: int = _volatile(10)
    log_every_seconds: float = _volatile(30.0)
    max_attempts: int = _volatile(5)
    # stop cleanly (last.pt, STOPPED, exit 75) once this many epochs are done; resumable with a larger value
    # or none. Successive halving's rungs (jobs/sweep.py). Not in the hash: the run id stays the same.
    stop_after_epochs: Optional[int] = _volatile(None)
    # optimizer steps with a non-finite (NaN/inf) training loss tolerated, each skipped (no update); one more
    # stops the run FAILED naming the step and the loss. fp16's GradScaler skips inf gradients itself (not counted)
    max_nonfinite_steps: int = _added(0)


@dataclass
class DistConfig:
    strategy: str = "auto"  # auto | single | ddp | deepspeed
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    timeout_s: float = _volatile(1800.0)  # a dead rank fails the others after this
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputConfig:
    root: Optional[str] = _volatile(None)  # default $IMGTRAIN_ROOT or ./runs
    run: Optional[str] = _volatile(None)  # run id; default <config name>-<config hash>
    sweep: Optional[str] = _volatile(None)
    cell: Optional[str] = _volatile(None)


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# Closed choices, checked with the types.
CHOICES = {
    "task.name": ("classification", "score_distribution"),
    "task.loss": ("ce", "emd", "mse"),
    "task.class_weights": (None, "balanced"),
    # optim.name: any of timm.optim.list_optimizers(), checked by OptimConfig when the config loads
    "sched.name": ("cosine", "step", "plateau", "none"),
    "trainer.precision": ("fp32", "bf16", "fp16"),
    "trainer.monitor_mode": ("auto", "max", "min"),
    "dist.strategy": ("auto", "single", "ddp", "deepspeed"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "dist.zero_stage": (0, 1, 2, 3),
    "data.interpolation": ("bilinear", "bicubic", "nearest", "random"),
    "data.decode_on": ("workers", "device"),
    "data.cache": ("none", "memory", "auto"),
}
