"""Source readers, one module per kind. Each returns a Source listing Records; images are read later."""

from __future__ import annotations

from shards.records import Source, SourceError
from shards.sources.ava import ava
from shards.sources.cifar import cifar10, cifar100
from shards.sources.digits import digits
from shards.sources.imagefolder import imagefolder
from shards.sources.mnist import mnist
from shards.sources.tinyimagenet import tinyimagenet

# kind -> (reader, the source-specific pack options it takes)
KINDS = {
    "cifar10": (cifar10, ()),
    "cifar100": (cifar100, ("coarse",)),
    "imagefolder": (imagefolder, ("split_list",)),
    "tinyimagenet": (tinyimagenet, ("official_val",)),
    "mnist": (mnist, ("fashion",)),
    "ava": (ava, ("ava_txt", "images", "tags", "challenges", "train_ids", "test_ids")),
    "digits": (digits, ("upscale",)),
}


def open_source(kind: str, src: str, options: dict) -> Source:
    """Read the source's listing; options holds every pack option, each reader takes its own."""
    if kind not in KINDS:
        raise SourceError(f"unknown source kind {kind!r} (choose from {', '.join(KINDS)})")
    reader, names = KINDS[kind]
    return reader(src, **{n: options[n] for n in names if options.get(n) is not None})
