"""Command line: ``python -m shards pack|verify|info``. Exit status 0 ok, 1 failed, 2 usage error."""

from __future__ import annotations

import argparse
import json
import re
import sys

from shards import __version__
from shards.dirlock import Locked
from shards.info import render, split_lines, summary
from shards.pack import PackOptions, StrictError, UsageError, pack
from shards.records import SourceError
from shards.sources import KINDS
from shards.verify import verify
from shards.writer import PackError

PACK_EPILOG = """\
kinds and SRC:
  cifar10       cifar-10-batches-py/ (or its parent): official python pickles
  cifar100      cifar-100-python/ (or its parent); --coarse packs the 20 superclasses
  imagefolder   SRC/<class>/... or SRC/{train,val,test}/<class>/...; --split-list NAME=FILE
                (repeatable) packs only the listed files, each in its list's split
  tinyimagenet  tiny-imagenet-200/ (or its parent); --official-val test|none carves val from train
                and keeps the official val as test (or leaves it out)
  mnist         folder of the four MNIST / Fashion-MNIST IDX files (.gz or not, or under raw/);
                official train/test; --fashion for the Fashion-MNIST class names (default: when a
                folder name in SRC or --name contains "fashion"), else the digits 0-9
  ava           SRC/AVA.txt + SRC/images/<id>.jpg (+ tags.txt, challenges.txt)
  digits        '-' (scikit-learn's bundled 8x8 digits; --upscale N, nearest neighbour)

splits: the source's own splits are kept; a missing val (test) split is carved per class from
train by a seeded hash of each sample key, so it never depends on file order or --workers.
--val-fraction 0 (--test-fraction 0) carves none: no val (test) split unless the source has one.
--split-list FILE: one path a line, relative to SRC (e.g. bedroom/image_0001.jpg); files in no list
are left out and counted (manifest source.unlisted); a listed path that does not exist is an error
naming the list file and line.
JPEG/PNG files are stored byte for byte, other formats and raw pixels as lossless PNG.
An interrupted pack, run again, keeps every complete shard and writes the rest.

examples:
  python -m shards pack digits - data/digits --upscale 32
  python -m shards pack cifar10 ~/data/cifar-10-batches-py data/cifar10 --workers 4
  python -m shards pack cifar100 ~/data/cifar-100-python data/cifar100-coarse --coarse
  python -m shards pack imagefolder ~/photos data/photos --resize 256 --val-fraction 0.2
  python -m shards pack imagefolder ~/15scene data/scene15 --split-list train=train.txt --split-list val=val.txt
  python -m shards pack tinyimagenet ~/data data/tin-80-20 --official-val test --val-fraction 0.2
  python -m shards pack mnist ~/data/fashion-mnist data/fashion_mnist
  python -m shards pack ava ~/data/AVA data/ava --test-ids ~/data/AVA/test.jlist --max-shard-bytes 500M
  python -m shards pack imagefolder /big/set /scratch/set --submitit-array 16 --workers 8
"""

VERIFY_EPILOG = """\
Checks every shard's size and sha256 against manifest.json, the sample counts, that every sample
has a decodable image and a label of the right type (cls within range; for AVA a 10-bin json
distribution), duplicate keys, and the same image (by content hash) in two splits.
Prints each problem and exits 1 if there is any, else one line starting with "OK".

examples:
  python -m shards verify data/cifar10
  python -m shards verify data/ava --workers 4
"""

INFO_EPILOG = """\
Shows name, task, classes, samples/shards/MB per split, per-class min..max, skipped items,
image statistics, the source and how its splits were made, from manifest.json alone.

examples:
  python -m shards info data/digits
  python -m shards info data/digits --json | python -c 'import json,sys; print(json.load(sys.stdin)["splits"])'
"""


def main(argv: list[str] | None = None, before_sample=None) -> int:
    """`python -m shards ...`. `before_sample`: the tests' seam into the shard writer (tests/hooked_pack.py)."""
    args = build_parser().parse_args(argv)
    args.before_sample = before_sample
    try:
        return args.run(args)
    except (UsageError, SourceError) as e:
        print(f"shards: error: {e}", file=sys.stderr)
        return 2
    except (PackError, StrictError, Locked) as e:
        print(f"shards: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only folder: one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"shards: error: {where}{e.strerror or e}; what was written before stays valid (shards are "
              "renamed into place only when complete): run the same command again once it is fixed", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shards: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shards", description="Pack image data sets into verified WebDataset shards.",
        epilog="run 'python -m shards COMMAND --help' for each command's options and examples")
    parser.add_argument("--version", action="version", version=f"imgtrain-shards {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("pack", help="pack a source data set into shards", formatter_class=fmt,
                       description="Pack a data set into OUT/{train,val,test}-NNNNNN.tar + OUT/manifest.json.",
                       epilog=PACK_EPILOG)
    p.add_argument("kind", metavar="KIND", help=f"source kind: {', '.join(KINDS)}")
    p.add_argument("src", metavar="SRC", help="source folder ('-' for digits)")
    p.add_argument("out", metavar="OUT", help="output folder (created; resumed if it holds this data set)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes (default 1); the output is the same for any N")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard at most (default 1000)")
    p.add_argument("--max-shard-bytes", type=_bytes, metavar="B", help="bytes per shard at most, e.g. 500M or 2G")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of train carved as val when the source has no val (default 0.1)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="share of train carved as test when the source has no test (default 0.2 for digits, else 0)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the split and order hashes (default 0)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) instead of skipping a bad item")
    p.add_argument("--resize", type=int, metavar="SHORT_SIDE",
                   help="downscale (bicubic) images whose short side is larger")
    p.add_argument("--format", choices=("png", "jpg", "webp"),
                   help="store every image in this format (re-encoding others)")
    p.add_argument("--quality", type=int, default=95, metavar="Q",
                   help="JPEG/WebP quality when re-encoding (default 95)")
    p.add_argument("--name", help="data set name in the manifest (default from the source)")
    p.add_argument("--replace", action="store_true",
                   help="OUT holds this source packed with other options: replace it (runs on it see new data)")
    g = p.add_argument_group("source-specific options")
    g.add_argument("--coarse", action="store_true", default=None, help="cifar100: the 20 superclasses are the classes")
    g.add_argument("--upscale", type=int, metavar="N", help="digits: enlarge the 8x8 images to NxN (nearest neighbour)")
    g.add_argument("--split-list", "--split-lists", action="append", dest="split_list", metavar="NAME=FILE",
                   help="imagefolder: pack only the files FILE lists (one path a line, relative to SRC) into "
                        "split NAME (train, val or test); repeat for each split, or join them: train=A,val=B")
    g.add_argument("--official-val", choices=("val", "test", "none"),
                   help="tinyimagenet: the labelled val/ images become val (default), test, or are left out; "
                        "with test or none, val is carved from train by --val-fraction")
    g.add_argument("--fashion", action=argparse.BooleanOptionalAction, default=None,
                   help="mnist: Fashion-MNIST class names (default: when SRC's folder name or --name says "
                        "'fashion'); --no-fashion: the digits 0-9")
    g.add_argument("--ava-txt", metavar="FILE", help="ava: the AVA.txt file (default SRC/AVA.txt)")
    g.add_argument("--images", metavar="DIR", help="ava: folder of <id>.jpg (default SRC/images)")
    g.add_argument("--tags", metavar="FILE",
                   help="ava: tag names, '<id> <name>' lines (default SRC/tags.txt if present)")
    g.add_argument("--challenges", metavar="FILE", help="ava: challenge names (default SRC/challenges.txt if present)")
    g.add_argument("--train-ids", metavar="FILE", help="ava: official train ids, one a line")
    g.add_argument("--test-ids", metavar="FILE", help="ava: official test ids, one a line")
    g = p.add_argument_group("job arrays (large data sets)")
    g.add_argument("--submitit-array", type=int, metavar="N", help="scan and write as a submitit job array of N jobs")
    g.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="submitit executor (default slurm)")
    g.add_argument("--submitit-folder", metavar="DIR", help="job logs (default OUT/.submitit, removed on success)")
    g.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition for the array jobs")
    p.set_defaults(run=_pack)

    p = sub.add_parser("verify", help="check shards against the manifest", formatter_class=fmt,
                       description="Verify a packed data set.", epilog=VERIFY_EPILOG)
    p.add_argument("dir", metavar="DIR", help="data set folder (holds manifest.json)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes (default 1)")
    p.set_defaults(run=_verify)

    p = sub.add_parser("info", help="summarise a packed data set", formatter_class=fmt,
                       description="Summarise a packed data set.", epilog=INFO_EPILOG)
    p.add_argument("dir", metavar="DIR", help="data set folder (holds manifest.json)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=_info)
    return parser


def _pack(args) -> int:
    if args.kind not in KINDS:
        raise UsageError(f"unknown source kind {args.kind!r} (choose from {', '.join(KINDS)})")
    specific = {n: getattr(args, n) for _, names in KINDS.values() for n in names}
    if args.kind == "mnist" and args.fashion is None and args.name and "fashion" in args.name.lower():
        specific["fashion"] = True  # --name fashion_mnist implies --fashion
    wrong = [n for n, v in specific.items() if v is not None and n not in KINDS[args.kind][1]]
    if wrong:
        raise UsageError(f"--{wrong[0].replace('_', '-')} does not apply to {args.kind}")
    test_fraction = args.test_fraction if args.test_fraction is not None else (0.2 if args.kind == "digits" else 0.0)
    opts = PackOptions(
        kind=args.kind, src=args.src, out=args.out, workers=args.workers, shard_size=args.shard_size,
        max_shard_bytes=args.max_shard_bytes, val_fraction=args.val_fraction, test_fraction=test_fraction,
        seed=args.seed, strict=args.strict, resize=args.resize, format=args.format, quality=args.quality,
        name=args.name, source_options={n: v for n, v in specific.items() if v is not None},
        submitit_array=args.submitit_array, submitit_cluster=args.submitit_cluster,
        submitit_folder=args.submitit_folder, slurm_partition=args.slurm_partition, replace=args.replace,
        before_sample=args.before_sample)
    result = pack(opts)
    m = result["manifest"]
    total = sum(e["count"] for e in m["splits"].values())
    what = f"{len(m['classes'])} classes" if m["task"] == "classification" else f"{len(m['bins'])} score bins"
    print(f"packed {m['name']} ({m['task']}, {what}) into {args.out}")
    print("\n".join(split_lines(m)))
    shards = result["new_shards"] + result["kept_shards"]
    print(f"skipped {len(m['skipped'])} | {_plural(shards, 'shard')}: {result['new_shards']} written "
          f"({result['written_bytes'] / 1e6:.2f} MB), {result['kept_shards']} kept from an earlier run | "
          f"{total:,} images in {result['seconds']:.1f} s ({total / max(result['seconds'], 1e-9):,.0f} images/s)")
    if m["task"] == "classification":  # an empty class folder still becomes a class: the model gets an output
        totals = [sum((e.get("class_counts") or [0] * len(m["classes"]))[i] for e in m["splits"].values())
                  for i in range(len(m["classes"]))]
        for name, n in zip(m["classes"], totals):
            if n == 0:
                print(f"warning: class '{name}' has no sample in any split (an empty or unreadable class folder?); "
                      "it is still a class, with an output the model can never learn", file=sys.stderr)
    if m["source"].get("unlisted"):
        print(f"left out {m['source']['unlisted']:,} file(s) in no --split-list")
    for item in m["skipped"][:5]:
        print(f"  skipped {item['id']}: {item['reason']}")
    if len(m["skipped"]) > 5:
        print(f"  ... {len(m['skipped']) - 5} more in manifest.json 'skipped'")
    return 0


def _verify(args) -> int:
    problems, m = verify(args.dir, args.workers)
    for p in problems:
        print(p)
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {args.dir}")
        return 1
    s = summary(m)
    per_split = ", ".join(f"{k} {v['samples']:,}" for k, v in s["splits"].items())
    n_shards = sum(v["shards"] for v in s["splits"].values())
    n_samples = sum(v["samples"] for v in s["splits"].values())
    print(f"OK {m['name']}: {n_samples:,} samples in {_plural(n_shards, 'shard')} "
          f"({per_split}); checksums, counts, images and labels verified, no duplicates")
    return 0


def _info(args) -> int:
    from shards.manifest import ManifestError, load_manifest

    try:
        m = load_manifest(args.dir)
    except ManifestError as e:
        print(f"shards: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary(m), indent=1) if args.json else render(m))
    return 0


def _bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 2G, 1000000)")
    power = "kmgt".find(match.group(2)) + 1 if match.group(2) else 0  # K/M/G/T are powers of 1024
    return int(float(match.group(1)) * 1024 ** power)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
