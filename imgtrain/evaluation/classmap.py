"""The evaluated data set's classes -> the model's outputs (--class-map names / imagenet / FILE.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from imgtrain.evaluation.load import CLASS_MAP_KINDS, EvalError, LoadedModel
from imgtrain.tasks.class_map import imagenet_index, imagenet_names, norm_name


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
