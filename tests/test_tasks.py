"""Tasks: losses and metrics against torch, numpy, scipy and scikit-learn references on random data."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from imgtrain.config import ConfigError, TaskConfig
from imgtrain.tasks import build, emd_torch, metric_mode


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_distributions(rng, n, bins=10):
    votes = rng.integers(0, 30, size=(n, bins)).astype(np.float64) + rng.random((n, bins))
    return votes / votes.sum(axis=1, keepdims=True)


def emd_reference(p, q, r):
    """NIMA's EMD written out bin by bin."""
    out = []
    for pi, qi in zip(p, q):
        cdf_p = cdf_q = 0.0
        total = 0.0
        for a, b in zip(pi, qi):
            cdf_p += a
            cdf_q += b
            total += abs(cdf_p - cdf_q) ** r
        out.append((total / len(pi)) ** (1 / r))
    return np.array(out)


# --------------------------------------------------------------------------- classification

def test_ce_with_label_smoothing_equals_torch():
    task = build(TaskConfig(label_smoothing=0.1), num_outputs=5)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    expected = F.cross_entropy(logits, target, label_smoothing=0.1)
    torch.testing.assert_close(task.loss(logits, target), expected)
    assert not torch.allclose(task.loss(logits, target), F.cross_entropy(logits, target))


def test_soft_targets_from_mixup_are_not_smoothed_twice():
    task = build(TaskConfig(label_smoothing=0.1), num_outputs=4)
    logits = torch.randn(6, 4)
    soft = torch.softmax(torch.randn(6, 4), dim=1)  # timm's Mixup already smoothed these
    expected = -(soft * torch.log_softmax(logits, dim=1)).sum(1).mean()
    torch.testing.assert_close(task.loss(logits, soft), expected)
    plain = build(TaskConfig(), num_outputs=4)
    one_hot = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    torch.testing.assert_close(plain.loss(logits, one_hot), plain.loss(logits, torch.tensor([0, 1, 2, 3, 0, 1])))


def test_balanced_class_weights():
    counts = [10, 30, 60, 0]
    task = build(TaskConfig(class_weights="balanced"), num_outputs=4, class_counts=counts)
    n, c = 100, 4
    np.testing.assert_allclose(task.class_weights.numpy(), [n / (c * 10), n / (c * 30), n / (c * 60), 0.0], rtol=1e-6)
    logits, target = torch.randn(16, 4), torch.tensor([0, 1, 2] * 5 + [0])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([2.5, 100 / 120, 100 / 240, 0.0]))
    torch.testing.assert_close(task.loss(logits, target), expected)
    # weighted mean by hand: rare classes count more
    nll = -torch.log_softmax(logits, 1)[torch.arange(16), target]
    w = task.class_weights[target]
    torch.testing.assert_close(task.loss(logits, target), (w * nll).sum() / w.sum())
    with pytest.raises(ConfigError, match="class counts"):
        build(TaskConfig(class_weights="balanced"), num_outputs=4)


def test_classification_metrics_equal_sklearn(rng):
    n, c = 400, 7
    logits = rng.normal(size=(n, c))
    y = rng.integers(0, c, size=n)
    logits[np.arange(n), y] += rng.random(n) * 2  # better than chance, so metrics are not all equal
    task = build(TaskConfig(), num_outputs=c)
    m = task.metrics(logits, y)
    pred = logits.argmax(1)
    assert m["acc1"] == pytest.approx((pred == y).mean())
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert m["acc5"] == pytest.approx(np.mean([y[i] in top5[i] for i in range(n)]))
    assert m["acc1"] < m["acc5"] < 1.0
    ref_loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
    assert m["loss"] == pytest.approx(ref_loss)
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    for i in range(c):
        assert m[f"acc_class/{i}"] == pytest.approx((pred[y == i] == i).mean())


def test_classification_metric_edges(rng):
    task = build(TaskConfig(), num_outputs=3)
    logits = rng.normal(size=(20, 3))
    y = np.array([0, 1] * 10)  # class 2 absent
    m = task.metrics(logits, y)
    assert m["acc5"] == 1.0  # fewer than 5 classes: top-3 always holds the label
    assert np.isnan(m["acc_class/2"])
    soft = np.eye(3)[y] * 0.8 + 0.2 / 3
    assert task.metrics(logits, soft)["acc1"] == m["acc1"]


def test_macro_prf_matches_sklearn_with_absent_and_unpredicted_classes(rng):
    from imgtrain.tasks.classification import macro_prf
    for trial in range(20):
        c = int(rng.integers(2, 9))
        n = int(rng.integers(1, 40))
        y = rng.integers(0, max(1, c - 2), size=n)  # the top classes absent from the labels
        pred = rng.integers(0, c, size=n) if trial % 2 else y.copy()
        if trial % 3 == 0:
            pred[:] = 0  # most classes never predicted
        p, r, f = macro_prf(y, pred, c)
        assert p == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
        assert r == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
        assert f == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_confusion_matrix(rng):
    n, c = 120, 5
    logits, y = rng.normal(size=(n, c)), rng.integers(0, c - 1, size=n)
    task = build(TaskConfig(), num_outputs=c)
    out = task.extra_outputs(logits, y, class_names=list("abcde"))
    cm = out["confusion_matrix"]
    assert cm.shape == (c, c) and cm.sum() == n
    np.testing.assert_array_equal(cm, confusion_matrix(y, logits.argmax(1), labels=range(c)))
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y, minlength=c))
    assert out["class_names"] == list("abcde")


def test_classification_target_from_sample():
    task = build(TaskConfig(), num_outputs=10)
    t = task.target_from_sample(3, {"class": "cat"})
    assert t.dtype == torch.long and t.item() == 3
    assert task.target_from_sample(None, {"cls": "7"}).item() == 7
    with pytest.raises(ValueError, match="outside"):
        task.target_from_sample(10, {})
    with pytest.raises(ValueError, match="without a class"):
        task.target_from_sample(None, {"name": "x"})


# --------------------------------------------------------------------------- score distributions

@pytest.mark.parametrize("r", [1, 2])
def test_emd_loss_equals_numpy(rng, r):
    task = build(TaskConfig(name="score_distribution", loss="emd", emd_r=r), num_outputs=10)
    logits = rng.normal(size=(16, 10))
    q = random_distributions(rng, 16)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = emd_reference(p, q, r).mean()
    logits_t = torch.tensor(logits, requires_grad=True)
    loss = task.loss(logits_t, torch.tensor(q))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits_t.grad).all() and logits_t.grad.abs().sum() > 0


def test_emd_of_identical_distributions_is_zero_with_finite_gradient():
    q = torch.softmax(torch.randn(3, 10), 1)
    logits = torch.log(q).clone().requires_grad_(True)
    loss = emd_torch(torch.softmax(logits, 1), q).mean()
    loss.backward()
    assert loss.item() < 1e-5 and torch.isfinite(logits.grad).all()


def test_mse_loss():
    task = build(TaskConfig(name="score_distribution", loss="mse"), num_outputs=10)
    logits, q = torch.randn(4, 10), torch.softmax(torch.randn(4, 10), 1)
    torch.testing.assert_close(task.loss(logits, q), ((torch.softmax(logits, 1) - q) ** 2).mean())


def test_ava_metrics_equal_scipy_and_numpy(rng):
    n = 300
    task = build(TaskConfig(name="score_distribution", loss="emd", emd_r=2), num_outputs=10)
    q = random_distributions(rng, n)
    logits = np.log(q + 0.05) + rng.normal(scale=0.5, size=(n, 10))
    m = task.metrics(logits, q)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bins = np.arange(1, 11)
    pm, tm = p @ bins, q @ bins
    assert m["emd"] == pytest.approx(emd_reference(p, q, 2).mean())
    assert m["loss"] == m["emd"]
    assert m["mse"] == pytest.approx(((p - q) ** 2).mean())
    assert m["mae"] == pytest.approx(np.abs(p - q).mean())
    assert m["srcc"] == pytest.approx(spearmanr(pm, tm)[0])
    assert m["lcc"] == pytest.approx(pearsonr(pm, tm)[0])
    assert m["acc"] == pytest.approx(np.mean((pm > 5) == (tm > 5)))
    assert 0 < m["srcc"] < 1 and 0 < m["acc"] < 1
    extra = task.extra_outputs(logits, q)
    np.testing.assert_allclose(extra["pred_mean"], pm)
    np.testing.assert_allclose(extra["true_mean"], tm)


def test_constant_scores_give_nan_correlations():
    task = build(TaskConfig(name="score_distribution", loss="mse"), num_outputs=10)
    q = np.tile(np.full(10, 0.1), (5, 1))
    m = task.metrics(np.zeros((5, 10)), q)
    assert np.isnan(m["srcc"]) and np.isnan(m["lcc"])
    assert m["loss"] == m["mse"] == pytest.approx(0.0, abs=1e-20)


def test_score_target_from_sample():
    task = build(TaskConfig(name="score_distribution", loss="emd"), num_outputs=10)
    dist = [0.0, 0.1, 0.1, 0.2, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0]
    t = task.target_from_sample(None, {"distribution": dist, "mean": 5.0})
    assert t.dtype == torch.float32 and torch.allclose(t, torch.tensor(dist))
    votes = task.target_from_sample(None, {"votes": [0, 1, 1, 2, 2, 2, 1, 1, 0, 0]})
    torch.testing.assert_close(votes, torch.tensor(dist))
    with pytest.raises(ValueError, match="10 bins"):
        task.target_from_sample(None, {"distribution": [0.5, 0.5]})


# --------------------------------------------------------------------------- interface

def test_monitor_and_modes():
    cls = build(TaskConfig(), num_outputs=3)
    ava = build(TaskConfig(name="score_distribution", loss="emd"), num_outputs=10)
    assert cls.name == "classification" and cls.num_outputs == 3 and cls.monitor_default == ("val/acc1", "max")
    assert ava.name == "score_distribution" and ava.monitor_default == ("val/emd", "min")
    assert [metric_mode(m) for m in ("val/acc1", "test/f1", "val/acc_class/3", "srcc", "val/lcc")] == ["max"] * 5
    assert [ava.mode(m) for m in ("val/loss", "val/emd", "mse", "train/mae")] == ["min"] * 4
    with pytest.raises(ValueError, match="trainer.monitor_mode"):
        cls.mode("val/zork")


@pytest.mark.parametrize("cfg,match", [
    (TaskConfig(name="classification", loss="emd"), "use ce"),
    (TaskConfig(name="score_distribution", loss="ce"), "emd"),
    (TaskConfig(name="score_distribution", loss="emd", label_smoothing=0.1), "classification only"),
    (TaskConfig(name="score_distribution", loss="emd", emd_r=0), "emd_r"),
])
def test_bad_task_config(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build(cfg, num_outputs=10, class_counts=[1] * 10)


def test_class_map_onto_imagenet_keeps_1000_outputs(tmp_path):
    """task.class_map=imagenet (S002): folders named as ImageNet classes train a 1000-way head; each class's
    target is its ImageNet index, by wnid or English name; unknown names and misuse are config errors."""
    task = build(TaskConfig(class_map="imagenet"), 3, None, ["airliner", "n01443537", "tabby cat"])
    assert task.num_outputs == 1000 and task.target_map == [404, 1, 281]
    assert [int(task.target_from_sample(c, {})) for c in range(3)] == [404, 1, 281]
    assert task.output_names[404] == "airliner" and len(task.output_names) == 1000
    with pytest.raises(ValueError, match="outside the class map's 3 classes"):
        task.target_from_sample(3, {})
    with pytest.raises(ConfigError, match="1 of 2 classes are no ImageNet-1k wnid or name: 'airlinr' .close: 'airliner'"):
        build(TaskConfig(class_map="imagenet"), 2, None, ["airlinr", "tabby"])
    with pytest.raises(ConfigError, match="needs 1000 outputs"):
        build(TaskConfig(class_map="imagenet"), 2, None, ["airliner", "tabby"], model_outputs=10)
    with pytest.raises(ConfigError, match="classification only"):
        build(TaskConfig(name="score_distribution", loss="mse", class_map="imagenet"), 10)
    json_map = tmp_path / "map.json"
    json_map.write_text('{"cat": 2, "dog": 0}')
    task = build(TaskConfig(class_map=str(json_map)), 2, None, ["cat", "dog"], model_outputs=5)
    assert task.num_outputs == 5 and task.target_map == [2, 0] and task.output_names[2] == "cat"
    json_map.write_text('{"cat": 2}')
    with pytest.raises(ConfigError, match="no entry for class.es. dog"):
        build(TaskConfig(class_map=str(json_map)), 2, None, ["cat", "dog"])
