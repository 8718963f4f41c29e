"""Extract features from a named layer of a trained run (or a pretrained model) for every sample of a
split, to sharded Parquet or .npy files plus manifest.json; optionally draw a t-SNE map of them.

examples:
  python jobs/extract.py runs/runs/digits-a0c02405 --list-layers
  python jobs/extract.py runs/runs/digits-a0c02405 --layer pre_logits --split train --tsne tsne.png
  python jobs/extract.py --config jobs/configs/clipart_vgg19.yaml model.pretrained_path=/weights/vgg19.safetensors \\
      data.path=shards/clipart --layer pre_logits.act2 --split train --format npy --out feats/clipart-train
  torchrun --nproc_per_node 4 jobs/extract.py RUN_DIR --layer features.34 --pool avg --split train

--layer is a module name (--list-layers prints every name with its output shape) or pre_logits: timm's
forward_head(pre_logits=True), the pooled vector the classifier sees. A layer's output is pooled to one
vector per image (--pool auto: mean over H, W of a 4-D map, over the tokens of a 3-D output).
Files (default RUN_DIR/features/<data set>-<split>-<layer>): shard j holds samples [j*S, (j+1)*S) of the
split (S = --shard-size), the same files whatever the number of processes: features-NNNNN.parquet (key,
index, label, feature) or features-NNNNN.npy [n, D] + labels-, keys-, index-NNNNN.npy; manifest.json is
written last (by rank 0 under torchrun, each rank writing its own shards). Read them back with
imgtrain.studies.features.load_features(DIR); jobs/svm.py takes the directory.
Exit status: 0 done, 1 failed, 2 bad arguments (unknown run, layer, data set or checkpoint).
"""
import argparse
import sys
from pathlib import Path

# imgtrain (torch, timm) is imported in main(), after the arguments are parsed: --help answers at once


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="extract.py", description=__doc__,
                                usage="%(prog)s (RUN_DIR | --config FILE) [key=value ...] (--layer NAME | "
                                      "--list-layers) [options]",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="RUN_DIR | key=value",
                   help="a run directory (<root>/runs/<run id>), then config overrides")
    p.add_argument("--config", metavar="FILE", help="the model of this config (no run directory)")
    p.add_argument("--layer", metavar="NAME", help="module name, or pre_logits")
    p.add_argument("--list-layers", action="store_true", help="print the model's layers with output shapes and exit")
    p.add_argument("--split", default="train", help="split to extract (default train)")
    p.add_argument("--data", metavar="DIR", help="another shard data set (replaces data.path)")
    p.add_argument("--checkpoint", metavar="best|last|PATH", help="run checkpoint (default best) or a weights file")
    p.add_argument("--format", choices=("parquet", "npy"), default="parquet", help="file format (default parquet)")
    p.add_argument("--pool", choices=("auto", "avg", "max", "cls", "flatten"), default="auto",
                   help="how a layer's output becomes one vector per image (default auto)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored precision")
    p.add_argument("--shard-size", type=int, default=10000, metavar="N", help="samples per file (default 10000)")
    p.add_argument("--batch-size", type=int, metavar="N", help="per-process batch (default data.eval_batch_size)")
    p.add_argument("--workers", type=int, metavar="N", help="data loader workers (default data.num_workers)")
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--tsne", metavar="PNG", help="also draw a t-SNE map of the features, coloured by class")
    p.add_argument("--tsne-points", type=int, default=2000, metavar="N", help="t-SNE subsample (default 2000)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from imgtrain import evaluation as E
    from imgtrain.studies import features as F
    from imgtrain.engine import dist
    try:
        if not args.list_layers and not args.layer:
            raise E.EvalError("give --layer NAME (or --list-layers to see the names)")
        run_dir, overrides = E.split_positionals(args.args, args.config)
        src = E.resolve_source(run_dir, args.config, overrides, data=args.data, checkpoint=args.checkpoint,
                               workers=args.workers)
    except E.EvalError as e:
        print(f"extract.py: error: {e}", file=sys.stderr)
        return 2
    env = dist.init(src.cfg)
    try:
        loaded = E.load_model(src, env.device, need_head=False)
        if args.list_layers:
            if env.is_main:
                data = loaded.cfg.data
                for name, kind, shape in F.layer_table(loaded.model, data.in_chans, data.img_size):
                    print(f"{name:<40} {kind:<32} {list(shape) if shape is not None else '-'}")
            return 0
        F.LayerTap(loaded.model, args.layer, args.pool)  # unknown layer: fail before reading any data
        out = Path(args.out) if args.out else E.default_out(loaded, args.split, "features", f"-{args.layer}")
        if env.is_main:
            print(f"[extract] {loaded.describe()}\n[extract] layer {args.layer} of split {args.split} of "
                  f"{loaded.info.root} -> {out}", flush=True)
            E.log_notes(loaded, "extract.py")
        m = F.extract(loaded, args.split, args.layer, env, out, fmt=args.format, pool=args.pool,
                      batch=args.batch_size, shard_size=args.shard_size, dtype=args.dtype)
        if env.is_main:
            print(f"[extract] {m['count']} x {m['dim']} features ({m['dtype']}) in {len(m['shards'])} "
                  f"{args.format} shard(s), {len(m['skipped'])} skipped, {m['seconds']:.1f}s on {env.world} "
                  f"process(es)\n  manifest     {out / 'manifest.json'}", flush=True)
            if args.tsne:
                feats = F.load_features(out)
                t = F.plot_tsne(feats.X, feats.y, feats.class_names, args.tsne, max_points=args.tsne_points,
                                title=f"{loaded.cfg.model.name} {args.layer}, {args.split} split")
                print(f"  tsne         {t['path']} ({t['points']} of {t['of']} points)", flush=True)
    except E.EvalError as e:
        if env.is_main:
            print(f"extract.py: error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.close(env)
    return 0

