"""Evaluation and error analysis of a trained model (a run directory) or a pretrained one (config + weights).

    src = resolve_source(run_dir="runs/runs/tiny-1a2b3c4d", data="shards/clipart")  # or config=..., overrides=...
    env = dist.init(src.cfg)                                 # torchrun: every rank evaluates its part
    loaded = load_model(src, env.device)
    result = evaluate_split(loaded, "test", env)             # each sample once, gathered in index order
    files = write_outputs(result, "out/")                    # rank 0: metrics.json, confusion_matrix.png,
                                                             # predictions.parquet, per_class.csv

Which weights: a run's `checkpoints/{best,last}.pt` (its EMA weights when the run kept an EMA, as the
trainer's own test does) or any file: an imgtrain checkpoint or export, or a timm/torchvision weights file.
The model is rebuilt from the run's `config.yaml`; its input normalisation is the one it was trained with
(the training data set's statistics, or the pretrained model's), also when `--data` points at a new domain.

Labels and outputs: the model's outputs are matched to the evaluated data set's classes by index. When
the counts differ (an ImageNet head on a clip-art set), a class map says which output each class is
(`names`: by the run's class names; `imagenet`: by ImageNet wnid or name; a JSON file); metrics are then
over the data set's classes (the mapped outputs' logits), plus `full/acc1`, `full/acc5`, `full/loss` over
all of the model's outputs. Without a map, a count mismatch is an error: a re-initialised head would
only measure chance.

A problem the user can fix raises EvalError with a one-line message (the CLIs exit 2 with it).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn

from imgtrain import config as C
from imgtrain import models, tasks
from imgtrain.data import DatasetInfo, ShardSplit, build_split, dataset_info, resolve_norm
from imgtrain.engine.dist import DistEnv
from imgtrain.engine.evaluate import predict
from imgtrain.logs import atomic_write_bytes, atomic_write_text, resolve_root
from imgtrain.models.pretrained import _filtered, classifier_names, read_state_dict
from imgtrain.tasks.base import log_softmax, softmax
from imgtrain.tasks.class_map import imagenet_index, imagenet_names, norm_name

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


# ============================================================================ data classes -> outputs

def _imagenet_map(classes: list[str]) -> tuple[list[int], list[str]]:
    try:
        return imagenet_index(classes, "--class-map imagenet"), imagenet_names()[1]
    except ValueError as e:
        raise EvalError(str(e)) from None


def resolve_class_map(loaded: LoadedModel, spec: Optional[str]) -> LoadedModel:
    """Set `loaded.class_map` (data set class -> model output) from `spec`: None (identity; the counts
    must agree), 'names', 'imagenet' or a JSON file ([index per class] or {class name: index or name})."""
    if spec is None and getattr(loaded, "cfg", None) is not None:
        spec = loaded.cfg.task.class_map  # a run trained with task.class_map (S002) is scored the same way
    classes = loaded.info.class_names
    k, n = len(classes), loaded.num_outputs
    if loaded.info.task != "classification":
        if spec is not None:
            raise EvalError("--class-map applies to classification only")
        if k != n:
            raise EvalError(f"the model predicts {n} bins, the data set has {k}")
        return loaded
    if spec is None:
        if k != n:
            raise EvalError(
                f"the model has {n} outputs but data set {loaded.info.root} has {k} classes. Map the data set's "
                f"classes onto the model's outputs with --class-map names (the run's class names), --class-map "
                f"imagenet (ImageNet-1k wnids or names) or --class-map FILE.json; or fine-tune a new head "
                f"(jobs/train.py). A re-initialised head would only measure chance, so nothing is evaluated")
        if loaded.output_names is not None and [norm_name(c) for c in loaded.output_names] != \
                [norm_name(c) for c in classes]:
            diff = next(i for i, (a, b) in enumerate(zip(loaded.output_names, classes))
                        if norm_name(a) != norm_name(b))
            loaded.notes.append(f"class names differ from the model's (class {diff}: '{classes[diff]}' vs "
                                f"'{loaded.output_names[diff]}'); labels are matched by index (--class-map names "
                                "matches them by name)")
        return loaded
    names = loaded.output_names
    if spec == "names":
        if names is None:
            raise EvalError("--class-map names: the model's class names are unknown (only a run directory whose "
                            "training data set is readable has them); use a JSON class map")
        index = {norm_name(c): i for i, c in enumerate(names)}
        mapping = [index.get(norm_name(c), -1) for c in classes]
        missing = [c for c, m in zip(classes, mapping) if m < 0]
        if missing:
            raise EvalError(f"--class-map names: {len(missing)} classes are not among the model's: "
                            f"{', '.join(missing[:8])}")
    elif spec == "imagenet":
        if n != 1000:
            raise EvalError(f"--class-map imagenet needs a model with 1000 outputs (ImageNet-1k), this one has {n}")
        mapping, names = _imagenet_map(classes)
        loaded.output_names = names
    else:
        path = Path(spec)
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise EvalError(f"--class-map {spec}: not one of {', '.join(CLASS_MAP_KINDS)} nor a readable JSON file "
                            f"({e})") from None
        if isinstance(obj, list):
            if len(obj) != k:
                raise EvalError(f"--class-map {spec}: {len(obj)} entries for {k} classes")
            mapping = obj
        elif isinstance(obj, dict):
            missing = [c for c in classes if c not in obj]
            if missing:
                raise EvalError(f"--class-map {spec}: no entry for {', '.join(missing[:8])}")
            lookup = {norm_name(c): i for i, c in enumerate(names or [])}
            imagenet = names is None and n == 1000  # names of a 1000-way head: ImageNet-1k wnids or names
            mapping = []
            for c in classes:
                v = obj[c]
                if isinstance(v, str) and imagenet:
                    v = _imagenet_map([v])[0][0]
                elif isinstance(v, str):
                    if norm_name(v) not in lookup:
                        raise EvalError(f"--class-map {spec}: '{c}' -> '{v}', which is no output name of the model")
                    v = lookup[norm_name(v)]
                mapping.append(v)
            if imagenet:
                loaded.output_names = imagenet_names()[1]
        else:
            raise EvalError(f"--class-map {spec}: expected a JSON list or object")
        if not all(isinstance(v, int) and 0 <= v < n for v in mapping):
            raise EvalError(f"--class-map {spec}: every entry must be an output index in 0..{n - 1}")
    if len(set(mapping)) != len(mapping):
        raise EvalError("class map: two data set classes map onto the same output")
    loaded.class_map = np.asarray(mapping, dtype=np.int64)
    return loaded


# ============================================================================ evaluation

def _autocast(cfg: C.Config, device: torch.device):
    """As the trainer evaluates: autocast in the run's precision."""
    if cfg.trainer.precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class EvalResult:
    loaded: LoadedModel
    split: str
    metrics: dict[str, float]
    logits: np.ndarray  # [N, model outputs], index order
    targets: np.ndarray  # [N] class (data set's index) or [N, bins]
    indices: np.ndarray  # [N] sample index in the split
    keys: list[str]
    bad: list[str]  # unreadable samples, with reasons
    world: int
    seconds: float

    @property
    def class_names(self) -> list[str]:
        return self.loaded.info.class_names

    @property
    def restricted(self) -> np.ndarray:
        """Logits over the data set's classes: the mapped outputs' columns (all of them without a map)."""
        m = self.loaded.class_map
        return self.logits if m is None else self.logits[:, m]


def sample_keys(ds: ShardSplit, indices: Sequence[int]) -> list[str]:
    """Each sample's `__key__`, from the shard index (no sample is read)."""
    out = []
    for i in indices:
        shard, pos = ds.locate(int(i))
        out.append(ds.reader.indexes[shard].keys[pos])
    return out


def evaluate_split(loaded: LoadedModel, split: str, env: DistEnv) -> EvalResult:
    """Predict every sample of `split` once (DDP: each rank its block, gathered on every rank) and
    compute the task's metrics."""
    ds = loaded.dataset(split)
    cfg = loaded.cfg
    t0 = time.time()
    try:
        logits, targets, indices, bad = predict(
            loaded.model, ds, batch=cfg.data.eval_batch_size or cfg.data.batch_size,
            num_workers=cfg.data.num_workers, env=env, autocast=_autocast(cfg, env.device),
            channels_last=cfg.trainer.channels_last)
    except RuntimeError as e:
        if "could be read" in str(e):
            raise EvalError(str(e)) from None
        raise
    result = EvalResult(loaded, split, {}, logits, targets, indices, sample_keys(ds, indices), bad, env.world,
                        time.time() - t0)
    result.metrics = compute_metrics(result)
    return result


def compute_metrics(result: EvalResult) -> dict[str, float]:
    loaded = result.loaded
    metrics = loaded.task.metrics(result.restricted, result.targets)
    if loaded.class_map is not None:
        full = tasks.ClassificationTask(loaded.num_outputs).metrics(result.logits, loaded.class_map[result.targets])
        metrics.update({f"full/{k}": full[k] for k in ("loss", "acc1", "acc5")})
    metrics["samples"] = float(len(result.indices))
    metrics["skipped"] = float(len(result.bad))
    return metrics


def _topk(probs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def confusion(result: EvalResult) -> np.ndarray:
    """[K, K], rows true classes, columns predictions (over the data set's classes)."""
    return np.asarray(result.loaded.task.extra_outputs(result.restricted, result.targets)["confusion_matrix"])


def per_class(result: EvalResult) -> list[dict]:
    """Per data set class: samples, top-1, top-5, mean cross-entropy, precision, recall and F1 (scikit-learn,
    0 where undefined), and the class it is most often mistaken for."""
    logits, y, names = result.restricted, result.targets.astype(np.int64), result.class_names
    k = min(5, logits.shape[1])
    top = _topk(logits, k)
    nll = -log_softmax(logits)[np.arange(len(y)), y]
    cm = confusion(result)
    from sklearn.metrics import precision_recall_fscore_support
    prec, rec, f1s, _ = precision_recall_fscore_support(y, top[:, 0], labels=np.arange(len(names)),
                                                        average=None, zero_division=0)
    rows = []
    for i, name in enumerate(names):
        mask = y == i
        n = int(mask.sum())
        wrong = cm[i].copy()
        wrong[i] = 0
        j = int(wrong.argmax())
        rows.append({"class": i, "name": name, "samples": n,
                     "top1": float((top[mask, 0] == i).mean()) if n else None,
                     "top5": float((top[mask] == i).any(axis=1).mean()) if n else None,  # top-min(5, K)
                     "loss": float(nll[mask].mean()) if n else None,
                     "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1s[i]),
                     "confused_with": names[j] if wrong[j] else "", "confused_count": int(wrong[j])})
    return rows


def predictions_table(result: EvalResult) -> pa.Table:
    """One row per evaluated image, in index order.

    classification: key, index, label, label_name, pred, pred_name, correct, prob (of the true class),
    loss, top5 / top5_name / top5_prob (over the data set's classes); with a class map also
    model_top5 / model_top5_name / model_top5_prob over all of the model's outputs.
    score_distribution: key, index, true_mean, pred_mean, abs_error, emd, true_dist, pred_dist."""
    n = len(result.indices)
    cols: dict[str, pa.Array] = {"key": pa.array(result.keys, pa.string()),
                                 "index": pa.array(result.indices.astype(np.int64))}
    loaded = result.loaded

    def lists(values: np.ndarray, typ) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), typ), values.shape[1]) if n else \
            pa.array([], pa.list_(typ, values.shape[1]))

    if loaded.info.task == "classification":
        names = np.asarray(result.class_names, dtype=object)
        y = result.targets.astype(np.int64)
        probs = softmax(result.restricted)
        k = min(5, probs.shape[1])
        top = _topk(probs, k)
        pred = top[:, 0]
        cols.update(
            label=pa.array(y.astype(np.int32)), label_name=pa.array(names[y].tolist(), pa.string()),
            pred=pa.array(pred.astype(np.int32)), pred_name=pa.array(names[pred].tolist(), pa.string()),
            correct=pa.array(pred == y), prob=pa.array(probs[np.arange(n), y].astype(np.float32)),
            loss=pa.array((-np.log(np.maximum(probs[np.arange(n), y], 1e-45))).astype(np.float32)),
            top5=lists(top.astype(np.int32), pa.int32()),
            top5_name=pa.array([names[t].tolist() for t in top], pa.list_(pa.string())),
            top5_prob=lists(np.take_along_axis(probs, top, 1).astype(np.float32), pa.float32()))
        if loaded.class_map is not None:
            full = softmax(result.logits)
            ftop = _topk(full, min(5, full.shape[1]))
            onames = loaded.output_names or [str(i) for i in range(loaded.num_outputs)]
            cols.update(model_top5=lists(ftop.astype(np.int32), pa.int32()),
                        model_top5_name=pa.array([[onames[j] for j in t] for t in ftop], pa.list_(pa.string())),
                        model_top5_prob=lists(np.take_along_axis(full, ftop, 1).astype(np.float32), pa.float32()))
    else:
        q = np.asarray(result.targets, dtype=np.float64)
        q = q / q.sum(axis=1, keepdims=True)
        p = softmax(result.logits)
        task = loaded.task
        pm, tm = task.mean_scores(p), task.mean_scores(q)
        cols.update(true_mean=pa.array(tm), pred_mean=pa.array(pm), abs_error=pa.array(np.abs(pm - tm)),
                    emd=pa.array(tasks.emd_numpy(p, q, task.emd_r)),
                    true_dist=lists(q.astype(np.float32), pa.float32()),
                    pred_dist=lists(p.astype(np.float32), pa.float32()))
    return pa.table(cols)


# ============================================================================ outputs

def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out: str | Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(out, buf.getvalue())


def plot_confusion(cm: np.ndarray, names: Sequence[str], out: str | Path, title: str = "") -> Path:
    """Counts, rows true classes, columns predictions, class names on both axes (every n-th beyond 40)."""
    cm = np.asarray(cm)
    n = len(cm)
    size = min(16.0, max(5.0, 0.45 * n + 2))
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    ticks = list(range(0, n, max(1, n // 40)))
    longest = max((len(str(s)) for s in names), default=1)
    ax.set_xticks(ticks, [str(names[i]) for i in ticks], rotation=90 if longest > 3 else 0)
    ax.set_yticks(ticks, [str(names[i]) for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        top = cm.max() or 1
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="images")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)


def plot_scores(true_mean: np.ndarray, pred_mean: np.ndarray, out: str | Path, title: str = "") -> Path:
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(true_mean, pred_mean, s=6, alpha=0.5)
    lo, hi = float(min(true_mean.min(), pred_mean.min())), float(max(true_mean.max(), pred_mean.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set_xlabel("true mean score")
    ax.set_ylabel("predicted mean score")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)


def default_out(loaded: LoadedModel, split: str, kind: str = "eval", suffix: str = "") -> Path:
    """RUN_DIR/<kind>/<data set>-<split>-<checkpoint><suffix>, or
    <output root>/<kind>/<config name>-<data set>-<split><suffix>."""
    src, data = loaded.source, loaded.info.manifest.get("name") or loaded.info.root.name
    if src.run_dir is not None:
        return src.run_dir / kind / f"{data}-{split}-{Path(src.tag).stem}{suffix}"
    return resolve_root(loaded.cfg.output.root) / kind / f"{loaded.cfg.name}-{data}-{split}{suffix}"


def most_confused(cm: np.ndarray, names: Sequence[str], top: int = 5) -> list[tuple[str, str, int]]:
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(names[i], names[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j]]


def write_outputs(result: EvalResult, out: str | Path) -> dict[str, Path]:
    """metrics.json, predictions.parquet, and confusion_matrix.png + per_class.csv (classification) or
    scores.png (score distributions), each written atomically. Call on rank 0."""
    out = Path(out)
    loaded, src = result.loaded, result.loaded.source
    files: dict[str, Path] = {}
    table = predictions_table(result)
    record = {
        "split": result.split, "data": str(loaded.info.root), "dataset": loaded.info.manifest.get("name"),
        "task": loaded.info.task, "run_dir": str(src.run_dir) if src.run_dir else None,
        "config": str(src.config_file) if src.config_file else None, "model": loaded.cfg.model.name,
        "checkpoint": str(src.weights), "weights": loaded.weights_kind, "model_outputs": loaded.num_outputs,
        "mean": list(loaded.mean), "std": list(loaded.std), "metrics": result.metrics,
        "class_names": result.class_names,
        "class_map": loaded.class_map.tolist() if loaded.class_map is not None else None,
        "skipped": result.bad, "notes": loaded.notes, "world_size": result.world,
        "seconds": round(result.seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if loaded.info.task == "classification":
        cm = confusion(result)
        rows = per_class(result)
        record.update(confusion_matrix=cm.tolist(), per_class=rows)
        files["per_class"] = write_csv(rows, out / "per_class.csv")
        title = f"{loaded.cfg.model.name} on {record['dataset']} {result.split} (acc1 {result.metrics['acc1']:.4f})"
        files["confusion"] = plot_confusion(cm, result.class_names, out / "confusion_matrix.png", title)
    else:
        files["scores"] = plot_scores(table["true_mean"].to_numpy(), table["pred_mean"].to_numpy(),
                                      out / "scores.png", f"{loaded.cfg.model.name} on {record['dataset']} "
                                      f"{result.split} (srcc {result.metrics['srcc']:.3f})")
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    files["predictions"] = atomic_write_bytes(out / "predictions.parquet", buf.getvalue())
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(_json_safe(record), indent=1))
    return files


def write_csv(rows: list[dict], path: str | Path) -> Path:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return atomic_write_text(path, buf.getvalue())


def summary_lines(result: EvalResult, files: dict[str, Path]) -> list[str]:
    """What the CLI prints: the metrics, the weakest classes, the most frequent confusions, the files."""
    m = result.metrics
    shown = " ".join(f"{k} {v:.4f}" for k, v in m.items() if "/" not in k and k not in ("samples", "skipped"))
    lines = [f"{result.split}: {shown} | {int(m['samples'])} images, {int(m['skipped'])} skipped, "
             f"{result.seconds:.1f}s on {result.world} process(es)"]
    if result.loaded.class_map is not None:
        lines.append(f"over all {result.loaded.num_outputs} model outputs: " +
                     " ".join(f"{k[5:]} {m[k]:.4f}" for k in ("full/acc1", "full/acc5", "full/loss")))
    if result.loaded.info.task == "classification":
        rows = [r for r in per_class(result) if r["samples"]]
        worst = sorted(rows, key=lambda r: (r["top1"], r["class"]))[:5]
        lines.append("weakest classes (top-1): " + ", ".join(f"{r['name']} {r['top1']:.2f}" for r in worst))
        pairs = most_confused(confusion(result), result.class_names)
        if pairs:
            lines.append("most confused (true -> predicted): " + ", ".join(f"{a} -> {b} ({c})" for a, b, c in pairs))
    for name, path in files.items():
        lines.append(f"  {name:<12} {path}")
    return lines


# ============================================================================ command lines

def split_positionals(items: Sequence[str], config: Optional[str]) -> tuple[Optional[str], list[str]]:
    """`RUN_DIR [key=value ...]` or, with --config, `[key=value ...]`: (run dir, overrides)."""
    items = list(items)
    if config is None:
        if not items or "=" in items[0]:
            raise EvalError("give a RUN_DIR (a directory <root>/runs/<run id>) or --config FILE")
        run_dir, items = items[0], items[1:]
    else:
        run_dir = None
    bad = [i for i in items if "=" not in i]
    if bad:
        raise EvalError(f"unexpected argument '{bad[0]}' (overrides are key=value"
                        f"{'; a RUN_DIR does not go with --config' if config else ''})")
    return run_dir, items


def log_notes(loaded: LoadedModel, prog: str) -> None:
    for note in loaded.notes:
        print(f"{prog}: note: {note}", file=sys.stderr, flush=True)
