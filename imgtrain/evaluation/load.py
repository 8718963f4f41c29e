"""What to evaluate and the model to do it: a run directory or a config + weights file -> Source ->
LoadedModel (eval mode, on the device, with the normalisation it was trained with).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from imgtrain import config as C
from imgtrain import models, tasks
from imgtrain.data import DatasetInfo, ShardSplit, build_split, dataset_info, resolve_norm
from imgtrain.models.pretrained import _filtered, classifier_names, read_state_dict

CHECKPOINT_TAGS = ("best", "last")
CLASS_MAP_KINDS = ("names", "imagenet")


class EvalError(Exception):
    """A problem the user can fix; the CLIs print it as one line and exit 2."""


# ============================================================================ what to load

@dataclass
class Source:
    """Where the model comes from, resolved from the command line; nothing is built yet."""
    cfg: C.Config  # the evaluation's config (the run's, with --data / workers / batch overrides)
    weights: Path  # checkpoint or weights file
    tag: str  # best | last | the file name
    run_dir: Optional[Path] = None
    train_cfg: Optional[C.Config] = None  # the run's own config, as trained
    config_file: Optional[Path] = None
    notes: list[str] = field(default_factory=list)


def _load_config(path: Path, overrides: Sequence[str]) -> C.Config:
    try:
        return C.load(path, overrides)
    except C.ConfigError as e:
        raise EvalError(f"config: {e}") from None


def _run_checkpoint(run_dir: Path, checkpoint: Optional[str], notes: list[str]) -> tuple[Path, str]:
    ckdir = run_dir / "checkpoints"
    tag = checkpoint or "best"
    if tag not in CHECKPOINT_TAGS:
        path = Path(tag)
        if not path.is_file():
            raise EvalError(f"--checkpoint {tag}: no such file (give best, last or a checkpoint/weights file)")
        return path, path.name
    path = ckdir / f"{tag}.pt"
    if tag == "best" and not path.is_file() and (ckdir / "last.pt").is_file():
        notes.append("no best.pt (the run had no validation split): using last.pt, as the run's own test did")
        return ckdir / "last.pt", "last"
    if not path.is_file():
        if (ckdir / "deepspeed").is_dir():
            raise EvalError(f"{run_dir} is a DeepSpeed run: export its weights first (python jobs/export.py "
                            f"{run_dir} --tag {tag}) and pass the exported file with --checkpoint")
        held = sorted(p.name for p in ckdir.glob("*.pt")) if ckdir.is_dir() else []
        raise EvalError(f"{run_dir}: no checkpoints/{tag}.pt (checkpoints/ holds: {', '.join(held) or 'nothing'})")
    return path, tag


def resolve_source(run_dir: str | Path | None = None, config: str | Path | None = None,
                   overrides: Sequence[str] = (), *, data: Optional[str] = None, checkpoint: Optional[str] = None,
                   batch_size: Optional[int] = None, workers: Optional[int] = None) -> Source:
    """A run directory (config.yaml + a checkpoint tag or file) or a config file (+ --checkpoint or
    model.pretrained_path). `data` replaces data.path: evaluating the model on another data set."""
    if (run_dir is None) == (config is None):
        raise EvalError("give a RUN_DIR or --config FILE (not both)")
    extra = list(overrides)
    if data is not None:
        if not (Path(data) / "manifest.json").is_file():
            raise EvalError(f"--data {data}: no manifest.json there (pack the data set first: "
                            "python -m shards pack KIND SRC OUT)")
        extra.append(f"data.path={data}")
    if batch_size is not None:
        extra.append(f"data.eval_batch_size={batch_size}")
    if workers is not None:
        extra.append(f"data.num_workers={workers}")
    notes: list[str] = []
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            why = "does not exist" if not run_dir.exists() else "is not a run directory (no config.yaml)"
            raise EvalError(f"RUN_DIR {run_dir} {why}")
        cfg = _load_config(run_dir / "config.yaml", extra)
        train_cfg = _load_config(run_dir / "config.yaml", [])
        weights, tag = _run_checkpoint(run_dir, checkpoint, notes)
        return Source(cfg, weights, tag, run_dir=run_dir, train_cfg=train_cfg, notes=notes)
    config = Path(config)
    cfg = _load_config(config, extra)
    path = checkpoint or cfg.model.pretrained_path
    if path is None:
        raise EvalError("no weights: give --checkpoint FILE or model.pretrained_path=FILE (a randomly initialised "
                        "model measures nothing)")
    if path in CHECKPOINT_TAGS:
        raise EvalError(f"--checkpoint {path} needs a RUN_DIR; with --config give a file")
    if not Path(path).is_file():
        raise EvalError(f"weights file {path}: no such file (weights come only from local files)")
    return Source(cfg, Path(path), Path(path).name, config_file=config, notes=notes)


# ============================================================================ the model

@dataclass
class LoadedModel:
    cfg: C.Config
    info: DatasetInfo  # the data set evaluated
    task: Any  # its task (metrics over the data set's classes or bins)
    model: nn.Module  # eval mode, on the device
    mean: tuple
    std: tuple
    num_outputs: int
    output_names: Optional[list[str]]  # what the model's outputs are called, when known
    source: Source
    weights_kind: str  # ema | model | pretrained
    class_map: Optional[np.ndarray] = None  # data set class i -> model output class_map[i]; None: identity
    notes: list[str] = field(default_factory=list)

    def dataset(self, split: str) -> ShardSplit:
        try:
            return build_split(self.cfg, self.info, split, self.task, train=False, mean=self.mean, std=self.std)
        except ValueError as e:
            raise EvalError(str(e)) from None

    def describe(self) -> str:
        src = self.source
        where = f"run {src.run_dir.name}" if src.run_dir is not None else f"config {src.config_file}"
        return (f"{where}: {self.cfg.model.name} ({self.num_outputs} outputs), weights {src.weights} "
                f"({self.weights_kind})")


def _data_info(cfg: C.Config, what: str = "data.path") -> DatasetInfo:
    try:
        return dataset_info(cfg)
    except (ValueError, OSError) as e:
        raise EvalError(f"{what}: {e}") from None


def _head_size(model: nn.Module, sd: dict) -> Optional[int]:
    for head in classifier_names(model):
        for suffix in (".weight", ".bias"):
            t = sd.get(head + suffix)
            if isinstance(t, torch.Tensor) and t.ndim >= 1:
                return int(t.shape[0])
    return None


def _read_checkpoint(path: Path) -> Optional[tuple[dict, str, dict]]:
    """(state dict, 'ema' | 'model', the checkpoint) for an imgtrain checkpoint or export; None for
    any other weights file."""
    if path.suffix == ".safetensors":
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # load_pretrained reports what is wrong with the file
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and ("config_hash" in obj or "ema" in obj):
        if obj.get("ema") is not None:
            return obj["ema"], "ema", obj
        return obj["model"], "model", obj
    return None


def _set_outputs(model: nn.Module, cfg: C.Config, n: int) -> nn.Module:
    if getattr(model, "num_classes", None) == n:
        return model
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(n)
        return model
    return _build(cfg, n)


def _build(cfg: C.Config, n: int) -> nn.Module:
    try:
        return models.create_model(cfg.model, num_classes=n, in_chans=cfg.data.in_chans, img_size=cfg.data.img_size)
    except C.ConfigError as e:
        raise EvalError(str(e)) from None


def load_model(src: Source, device: torch.device | str = "cpu", *, need_head: bool = True) -> LoadedModel:
    """Build the model, load its weights, and resolve the data set and normalisation.

    `need_head`: the classifier must come from the weights (evaluation); feature extraction does not
    need it. The number of outputs is model.num_classes if set, else the size of the classifier in the
    weights, else the data set's class count.
    """
    cfg, notes = src.cfg, list(src.notes)
    info = _data_info(cfg)
    # metrics need no class weights or smoothing; a task.class_map is applied by resolve_class_map instead
    task_cfg = dataclasses.replace(cfg.task, class_weights=None, label_smoothing=0.0, class_map=None)
    try:
        task = tasks.build(task_cfg, info.num_outputs, info.class_counts)
    except C.ConfigError as e:
        raise EvalError(str(e)) from None
    train_info = None
    if src.train_cfg is not None:
        try:
            train_info = dataset_info(src.train_cfg)
        except (ValueError, OSError):
            notes.append(f"the run's training data set {src.train_cfg.data.path} is not readable here, so its "
                         "class names are unknown")
    guess = cfg.model.num_classes or (train_info.num_outputs if train_info else info.num_outputs)
    model = _build(cfg, guess)

    ckpt = _read_checkpoint(src.weights)
    if ckpt is not None:
        sd, kind, meta = ckpt
        n = cfg.model.num_classes or _head_size(model, sd) or guess
        model = _set_outputs(model, cfg, n)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = " ".join(str(e).split("\n\t")[:3]).replace("\n", " ")
            raise EvalError(f"{src.weights}: weights do not fit {cfg.model.name}: {first[:400]}") from None
        if src.train_cfg is not None and meta.get("config_hash") not in (None, C.config_hash(src.train_cfg)):
            notes.append(f"{src.weights.name} carries config hash {meta['config_hash']}, the run's config.yaml "
                         f"hashes to {C.config_hash(src.train_cfg)} (another config's checkpoint, or config keys "
                         "added since)")
    else:
        kind = "pretrained"
        try:
            sd = read_state_dict(src.weights)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e)) from None
        size = _head_size(model, sd)
        if size is None:
            alt = _filtered(sd, model)  # torchvision layouts: the classifier under timm's names
            size = _head_size(model, alt) if alt else None
        n = cfg.model.num_classes or size or guess
        model = _set_outputs(model, cfg, n)
        try:
            loaded = models.load_pretrained(model, src.weights, n)
        except (ValueError, FileNotFoundError) as e:
            raise EvalError(str(e)) from None
        heads = classifier_names(model)
        has_head = any(k.startswith(h + ".") for k in loaded["loaded"] for h in heads)
        if need_head and not has_head:
            why = (f"its classifier ({', '.join(loaded['head_dropped'])}) does not fit model.num_classes={n}"
                   if loaded["head_dropped"] else "it holds no classifier")
            raise EvalError(f"{src.weights}: {why}, so the outputs would come from a randomly initialised head; "
                            "evaluate a fine-tuned run instead, or use jobs/extract.py for features")
        if cfg.model.reinit or cfg.model.freeze_backbone:
            notes.append("model.reinit / model.freeze_backbone are training settings and are not applied here")
    pretrained = cfg.model.pretrained_path is not None or kind == "pretrained"
    norm_manifest = train_info.manifest if train_info is not None else info.manifest
    if src.train_cfg is not None and train_info is None and not pretrained and cfg.data.mean is None:
        notes.append("inputs are normalised with the evaluated data set's statistics, not the training set's "
                     "(set data.mean=[...] data.std=[...] to the training values)")
    try:
        mean, std = resolve_norm(cfg.data, models.data_config(model, pretrained), norm_manifest, pretrained)
    except ValueError as e:
        raise EvalError(str(e)) from None
    # a run's outputs are its training classes; a pretrained head's names are not known (--class-map imagenet)
    output_names = list(train_info.class_names) if train_info is not None and train_info.num_outputs == n else None
    model.eval().to(device)
    return LoadedModel(cfg, info, task, model, tuple(mean), tuple(std), n, output_names, src, kind, notes=notes)
