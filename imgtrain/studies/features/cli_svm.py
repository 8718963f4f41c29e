"""Cross-validated SVM on extracted features (jobs/extract.py): a grid over kernel x C x gamma,
standardised features (--no-standardize: as extracted), one-vs-rest; the best cell is refit on all
training features and scored on a held-out features directory if one is given. Reported as S002 does:
top-1 (acc1), top-5 (acc5) and cross-entropy (loss), from class probabilities: --scores decision (default)
takes the softmax of the SVM's decision values, --scores proba libsvm's Platt probabilities
(SVC(probability=True); slower, and the linear kernel becomes SVC(kernel=linear) instead of LinearSVC).

examples:
  python jobs/svm.py runs/runs/digits-a0c02405/features/digits-train-best-pre_logits
  python jobs/svm.py feats/clipart-train --val feats/clipart-test --kernel linear rbf --C 0.1 1 10 \\
      --gamma scale 0.01 --cv 5 --out runs/svm --jobs 4
  python jobs/svm.py feats/clipart-train --kernel linear --C 1 --cv 3 --tsne tsne.png
  python jobs/analyze.py runs/svm --sweep svm-clipart-train     # leaderboard and heat map of the grid
  # S002 (clip art, fc7 features): RBF C=1 gamma=1e-4 and sigmoid C=10 (gamma kept at 1e-4), one-vs-rest,
  # unscaled features, Platt probabilities, 20 % of the training features held out for the search
  python jobs/svm.py feats/clipart-train --val feats/clipart-test --kernel rbf sigmoid --C 1 10 --gamma 0.0001 \
      --no-standardize --scores proba --holdout 0.2

Each cell is cross-validated on the same seeded stratified folds (the scaler is fitted inside each fold),
or with --holdout F on one seeded stratified split holding out the fraction F; the linear kernel has no
gamma and gets one cell per C. one-vs-rest (--multiclass ovr, the default): LinearSVC for the linear
kernel, one SVC per class otherwise; ovo: libsvm's one-vs-one SVC. acc1, f1 and the confusion matrix
use the top-ranked class of the same probabilities as acc5 and loss (loss = mean -log p(true class),
p clipped at 1e-12; two classes: the decision value d scores [0, d]); acc5 is top-min(5, classes).
Results: every cell is a run under OUT/runs/<name>-<cell> with Parquet metrics in the DESIGN §3 long
format (val/acc1 = mean CV accuracy, val/acc1_std, val/f1, val/acc5, val/loss, val/fit_s, cv/acc1 per
fold; the best cell's held-out scores under test/: acc1, acc5, loss, precision, recall, f1, samples),
summary.parquet and a DONE marker, so imgtrain.logs.read_metrics and jobs/analyze.py read them; the best
cell's test_results.json adds the confusion matrix and per-class acc1/acc5/loss; the table goes to
OUT/<name>.csv and OUT/<name>.md. config.yaml records svm.standardize, svm.scores, svm.cv, svm.holdout.
Exit status: 0 done, 1 failed, 2 bad arguments (missing features, bad grid or fold count).
"""
import argparse
import sys
from pathlib import Path

# imgtrain (torch, timm) is imported in main(), after the arguments are parsed: --help answers at once


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="svm.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", metavar="FEATURES_DIR", help="training features (a directory written by extract.py)")
    p.add_argument("--val", metavar="FEATURES_DIR", help="held-out features: the best cell, refit, is scored on them")
    p.add_argument("--kernel", nargs="+", default=["linear", "rbf"], help="kernels (default linear rbf)")
    p.add_argument("--C", nargs="+", type=float, default=[0.1, 1.0, 10.0], help="C values (default 0.1 1 10)")
    p.add_argument("--gamma", nargs="+", default=["scale"], help="gamma values for non-linear kernels: scale, auto "
                                                                 "or numbers (default scale)")
    p.add_argument("--cv", type=int, default=5, help="stratified folds (default 5)")
    p.add_argument("--holdout", type=float, metavar="F",
                   help="instead of --cv folds, one stratified split holding out this fraction (S002: 0.2)")
    p.add_argument("--multiclass", choices=("ovr", "ovo"), default="ovr", help="one-vs-rest (default) or one-vs-one")
    p.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="fit the SVMs on the features as extracted (default: StandardScaler fitted on the "
                        "training part)")
    p.add_argument("--scores", choices=("decision", "proba"), default="decision",
                   help="class probabilities for acc1/acc5/loss: softmax of decision_function (default) or "
                        "SVC(probability=True).predict_proba")
    p.add_argument("--max-samples", type=int, metavar="N", help="stratified subsample of the training features")
    p.add_argument("--seed", type=int, default=0, help="folds, subsamples and t-SNE (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="folds fitted in parallel (default 1)")
    p.add_argument("--name", help="sweep name (default svm-<features dir name>)")
    p.add_argument("--out", metavar="DIR", help="output root (default FEATURES_DIR/svm)")
    p.add_argument("--tsne", metavar="PNG", help="also draw a t-SNE map of the training features")
    p.add_argument("--tsne-points", type=int, default=2000, metavar="N", help="t-SNE subsample (default 2000)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from imgtrain.studies import features as F
    from imgtrain.evaluation import EvalError
    try:
        train = F.load_features(args.features)
        val = F.load_features(args.val) if args.val else None
        cells = F.svm_grid(args.kernel, args.C, [F.parse_gamma(g) for g in args.gamma])
        name = args.name or f"svm-{train.path.resolve().name}"
        out = Path(args.out) if args.out else train.path / "svm"
        print(f"[svm] {len(train.X)} x {train.X.shape[1]} features ({train.manifest.get('layer')}), "
              f"{len(train.class_names)} classes; {len(cells)} cells x "
              f"{f'1 split holding out {args.holdout:g}' if args.holdout is not None else f'{args.cv} folds'}; "
              f"{'standardised' if args.standardize else 'unscaled'} features, {args.scores} scores", flush=True)
        study = F.svm_study(train, val, cells, out_root=out, name=name, cv=args.cv, seed=args.seed, jobs=args.jobs,
                            multiclass=args.multiclass, max_samples=args.max_samples, standardize=args.standardize,
                            scores=args.scores, holdout=args.holdout)
        print(F.svm_markdown(study, name), end="")
        for key, path in study.files.items():
            print(f"  {key:<12} {path}")
        print(f"  runs         {out / 'runs'} (sweep {name})")
        if args.tsne:
            t = F.plot_tsne(train.X, train.y, train.class_names, args.tsne, max_points=args.tsne_points,
                            seed=args.seed, title=f"{train.manifest.get('model')} {train.manifest.get('layer')}")
            print(f"  tsne         {t['path']} ({t['points']} of {t['of']} points)")
    except EvalError as e:
        print(f"svm.py: error: {e}", file=sys.stderr)
        return 2
    return 0

