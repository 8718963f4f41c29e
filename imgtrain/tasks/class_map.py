"""Data set classes -> model outputs, for training and evaluating a head wider than the data set.

S002 trains VGG-19 on clip-art folders named as ImageNet classes while keeping the 1000-way ImageNet
output, and reports top-1/top-5/cross-entropy over those 1000 outputs. `task.class_map` says how each
data set class (its index in the manifest) becomes an output index: "imagenet" (the class names are
ImageNet-1k wnids or English names, matched through timm's bundled ImageNet metadata) or a JSON file
(a list with one output index per class, or {class name: output index or ImageNet name}).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

IMAGENET_OUTPUTS = 1000


def norm_name(s: str) -> str:
    return " ".join(str(s).lower().replace("_", " ").replace("-", " ").split())


def imagenet_names() -> tuple[list[str], list[str]]:
    """(wnids, first English name) of the 1000 ImageNet-1k classes in their index order (from timm)."""
    from timm.data import ImageNetInfo
    inet = ImageNetInfo()
    wnids = [inet.index_to_label_name(i) for i in range(inet.num_classes())]
    return wnids, [inet.index_to_description(i).split(",")[0].strip() for i in range(inet.num_classes())]


def imagenet_index(classes: list[str], what: str = "task.class_map=imagenet") -> list[int]:
    """The ImageNet-1k index of each class name (a wnid or any of its English names); a ValueError naming
    the classes that are neither, with the closest names."""
    from timm.data import ImageNetInfo
    inet = ImageNetInfo()
    lookup: dict[str, int] = {}
    for i in range(inet.num_classes()):
        lookup.setdefault(norm_name(inet.index_to_label_name(i)), i)
        for name in inet.index_to_description(i).split(","):
            lookup.setdefault(norm_name(name), i)
    out = [lookup.get(norm_name(c), -1) for c in classes]
    missing = [c for c, i in zip(classes, out) if i < 0]
    if missing:
        close = {m: difflib.get_close_matches(norm_name(m), list(lookup), n=1) for m in missing[:5]}
        hint = "; ".join(f"'{m}'" + (f" (close: '{c[0]}')" if c else "") for m, c in close.items())
        raise ValueError(f"{what}: {len(missing)} of {len(classes)} classes are no ImageNet-1k wnid or name: {hint}; "
                         "write a JSON class map instead ({\"class name\": output index})")
    return out


@dataclass(frozen=True)
class ClassMap:
    outputs: list[int]  # data set class i -> model output outputs[i]
    num_outputs: int
    output_names: list[str]


def resolve(spec: str, classes: list[str], num_outputs: Optional[int] = None) -> ClassMap:
    """`spec` ("imagenet" or a JSON file) for the data set's `classes`; `num_outputs` (model.num_classes)
    is required for a JSON map that is not onto ImageNet and checked against the map."""
    what = f"task.class_map={spec}"
    if spec == "imagenet":
        n = num_outputs or IMAGENET_OUTPUTS
        if n != IMAGENET_OUTPUTS:
            raise ValueError(f"{what} needs 1000 outputs (ImageNet-1k); model.num_classes is {n}")
        return ClassMap(imagenet_index(classes, what), n, imagenet_names()[1])
    try:
        obj = json.loads(Path(spec).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: neither 'imagenet' nor a readable JSON file ({e})") from None
    if isinstance(obj, list):
        if len(obj) != len(classes) or not all(isinstance(v, int) for v in obj):
            raise ValueError(f"{what}: a list map holds one output index per class ({len(classes)}), got {obj!r:.200}")
        outputs = list(obj)
    elif isinstance(obj, dict):
        missing = [c for c in classes if c not in obj]
        if missing:
            raise ValueError(f"{what}: no entry for class(es) {', '.join(missing[:8])}")
        names = [obj[c] for c in classes]
        as_names = [v for v in names if isinstance(v, str)]
        inet = dict(zip(as_names, imagenet_index(as_names, what))) if as_names else {}
        outputs = [inet[v] if isinstance(v, str) else v for v in names]
        if not all(isinstance(v, int) for v in outputs):
            raise ValueError(f"{what}: values are output indices or ImageNet class names")
        if as_names:
            num_outputs = num_outputs or IMAGENET_OUTPUTS
    else:
        raise ValueError(f"{what}: a JSON list or object, not {type(obj).__name__}")
    n = num_outputs or max(outputs) + 1
    bad = [(c, o) for c, o in zip(classes, outputs) if not 0 <= o < n]
    if bad:
        raise ValueError(f"{what}: output indices outside 0..{n - 1}: {bad[:5]}")
    names = imagenet_names()[1] if n == IMAGENET_OUTPUTS else [f"output {i}" for i in range(n)]
    for c, o in zip(classes, outputs):
        if n != IMAGENET_OUTPUTS:
            names[o] = c
    return ClassMap(outputs, n, names)
