"""CIFAR-10's python format (data_batch_1..5, test_batch, batches.meta), written for the benchmarks that need a
data set of that shape: `shards pack cifar10` then reads it as it reads the real one."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar10_pickles(root: Path, batches: list[tuple[np.ndarray, np.ndarray]], per: int) -> Path:
    """`batches`: (uint8 pixels [k, 3072] in CIFAR's CHW row order, labels [k]) for each of BATCHES, in order."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, (pixels, labels)) in enumerate(zip(BATCHES, batches)):
        batch = {b"data": pixels, b"labels": [int(v) for v in labels],
                 b"filenames": [f"s{i}_{j}.png".encode() for j in range(len(labels))], b"batch_label": name.encode()}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": per,
                     b"num_vis": 3072}, f, protocol=2)
    return root
