"""Features from a named layer for every sample of a split, and what the studies did with them:
a cross-validated SVM grid (top-1, top-5, cross-entropy, as S002 reports) and a t-SNE map.

    layers = layer_table(loaded.model, loaded.cfg)            # [(name, type, output shape)], one dummy forward
    manifest = extract(loaded, "train", "pre_logits", env, out)   # DDP: each rank writes its shards
    feats = load_features(out)                                # X [N, D] float32, y, keys, index, class names
    plot_tsne(feats.X, feats.y, feats.class_names, "tsne.png")
    study = svm_study(feats, val_feats, svm_grid(["linear", "rbf"], [0.1, 1, 10], ["scale"]), out_root=...)

On disk (`extract`): shard j holds samples [j*S, (j+1)*S) of the split (S = shard_size), so the files do not
depend on the number of processes; under torchrun rank r writes the shards j with j % world == r, and rank 0
writes manifest.json last, once every shard is there. Formats: `features-NNNNN.parquet` (key, index, label,
feature as a fixed-size float list) or `features-NNNNN.npy` [n, D] + `labels-`, `keys-`, `index-NNNNN.npy`.
Every file is written atomically. Samples that cannot be decoded are left out and listed in the manifest.

Modules: extract.py (layers, extraction, load_features), tsne.py (plot_tsne), svm.py (the SVM grid,
one run directory per cell). The names below are their public API.
"""
from imgtrain.studies.features.extract import (FORMAT, POOLS, PRE_LOGITS, Features, LayerTap, extract,
                                               layer_table, load_features)
from imgtrain.studies.features.tsne import plot_tsne
from imgtrain.studies.features.svm import (PROB_FLOOR, SCORES, SvmCell, SvmStudy, class_probabilities,
                                           make_svm, parse_gamma, per_class_scores, score_metrics, svm_grid,
                                           svm_markdown, svm_study)

__all__ = ["FORMAT", "POOLS", "PRE_LOGITS", "Features", "LayerTap", "extract", "layer_table", "load_features",
           "plot_tsne", "PROB_FLOOR", "SCORES", "SvmCell", "SvmStudy", "class_probabilities", "make_svm",
           "parse_gamma", "per_class_scores", "score_metrics", "svm_grid", "svm_markdown", "svm_study"]
