"""Segmentation scores: a hand-computed case, an independent numpy cross-check, upsampling, batching."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkd.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from segkd.engine.metrics import ConfusionMatrix, scores

V = IGNORE_INDEX
NAMES4 = ("a", "b", "c", "d")
# 9 pixels, two of them void. Class c is only predicted (never ground truth); class d is
# predicted only on a void pixel, so it is absent from both after void is dropped.
GT = torch.tensor([[[0, 0, 0], [1, 1, 1], [1, V, V]]])
PRED = torch.tensor([[[0, 0, 1], [1, 1, 1], [2, 3, 0]]])
# rows = ground truth, cols = prediction
HAND_CM = [[2, 1, 0, 0],
           [0, 3, 1, 0],
           [0, 0, 0, 0],
           [0, 0, 0, 0]]


def test_hand_computed_case():
    cm = ConfusionMatrix(num_classes=4, class_names=NAMES4)
    cm.update(PRED, GT)
    m = cm.compute()
    assert m["confusion"] == HAND_CM
    # IoU = TP / (TP + FP + FN): a 2/3, b 3/5, c 0/1 (only predicted), d absent -> None
    assert m["iou"]["a"] == pytest.approx(2 / 3)
    assert m["iou"]["b"] == pytest.approx(3 / 5)
    assert m["iou"]["c"] == 0.0
    assert m["iou"]["d"] is None
    # accuracy = TP / ground-truth pixels; c and d never occur in the ground truth
    assert m["acc"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(3 / 4), "c": None, "d": None}
    assert m["mIoU"] == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)  # d left out of the mean
    assert m["mPA"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["aAcc"] == pytest.approx(5 / 7)  # void pixels do not count
    json.dumps(m, allow_nan=False)


def test_logits_give_the_same_scores_as_predictions():
    logits = F.one_hot(PRED, 4).permute(0, 3, 1, 2).float() * 5.0 - 1.0
    cm = ConfusionMatrix(num_classes=4, class_names=NAMES4)
    cm.update(logits, GT)
    assert cm.compute()["confusion"] == HAND_CM


def _numpy_scores(gt: np.ndarray, pred: np.ndarray, num_classes: int):
    """Independent reference: per-class masks instead of a confusion matrix."""
    keep = gt != IGNORE_INDEX
    g, p = gt[keep], pred[keep]
    iou, acc = [], []
    for c in range(num_classes):
        tp = np.sum((g == c) & (p == c))
        union = np.sum((g == c) | (p == c))
        iou.append(tp / union if union else np.nan)
        acc.append(tp / np.sum(g == c) if np.sum(g == c) else np.nan)
    return np.array(iou), np.array(acc), np.mean(g == p)


def test_matches_independent_numpy_computation():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, NUM_CLASSES, size=(3, 17, 23))
    gt[gt == 4] = 5  # Sidewalk never in the ground truth ...
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, NUM_CLASSES, size=gt.shape))
    pred[pred == 7] = 8  # ... Fence never predicted ...
    gt[gt == 7] = 8  # ... nor in the ground truth: absent
    gt[rng.random(gt.shape) < 0.1] = IGNORE_INDEX
    ref_iou, ref_acc, ref_aacc = _numpy_scores(gt, pred, NUM_CLASSES)

    cm = ConfusionMatrix()
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.uint8)))
    m = cm.compute()

    assert list(m["iou"]) == list(CLASS_NAMES)
    got_iou = np.array([np.nan if v is None else v for v in m["iou"].values()])
    got_acc = np.array([np.nan if v is None else v for v in m["acc"].values()])
    np.testing.assert_allclose(got_iou, ref_iou)
    np.testing.assert_allclose(got_acc, ref_acc)
    assert m["iou"]["Fence"] is None and m["acc"]["Fence"] is None
    assert m["acc"]["Sidewalk"] is None and m["iou"]["Sidewalk"] == 0.0
    assert m["mIoU"] == pytest.approx(np.nanmean(ref_iou))
    assert m["mPA"] == pytest.approx(np.nanmean(ref_acc))
    assert m["aAcc"] == pytest.approx(ref_aacc)
    cmat = np.array(m["confusion"])
    assert cmat.sum() == np.sum(gt != IGNORE_INDEX)
    assert cmat[3, 5] == np.sum((gt == 3) & (pred == 5))  # rows = ground truth, cols = prediction


def test_small_logits_are_upsampled_bilinearly_to_the_label_size():
    # Class-1 logit along the width [-1, 3]; upsampled 2 -> 4 with align_corners=False it is
    # [-1, 0, 2, 3] (source positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)).
    # Against a constant class-0 logit of -0.5 (image 0) and 1.8 (image 1) the argmax is
    # [0,1,1,1] and [0,0,1,1]; nearest or align_corners=True upsampling would differ.
    logits = torch.zeros(2, 2, 1, 2)
    logits[:, 1, 0] = torch.tensor([-1.0, 3.0])
    logits[0, 0] = -0.5
    logits[1, 0] = 1.8
    labels = torch.tensor([[[0, 1, 1, 1]], [[0, 0, 1, 1]]])
    for dtype in (torch.float32, torch.bfloat16):
        cm = ConfusionMatrix(num_classes=2, class_names=("x", "y"))
        cm.update(logits.to(dtype), labels)
        assert cm.compute()["confusion"] == [[3, 0], [0, 5]]


def test_accumulating_batches_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, NUM_CLASSES, 8, 10, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (6, 32, 40), generator=g)
    labels[:, :4] = IGNORE_INDEX
    one = ConfusionMatrix()
    one.update(logits, labels)
    acc = ConfusionMatrix()
    for i in range(0, 6, 2):
        acc.update(logits[i:i + 2], labels[i:i + 2])
    assert torch.equal(one.matrix, acc.matrix)
    assert acc.matrix.dtype == torch.int64
    assert acc.compute() == one.compute()
    acc.reset()
    assert int(acc.matrix.sum()) == 0


def test_scores_pool_summed_matrices():
    m = scores(np.array(HAND_CM) * 2, NAMES4)
    assert m["mIoU"] == pytest.approx((2 / 3 + 3 / 5) / 3)
    assert m["confusion"][0] == [4, 2, 0, 0]


def test_rejects_bad_input():
    cm = ConfusionMatrix(num_classes=4, class_names=NAMES4)
    with pytest.raises(ValueError, match="labels must be in"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="predictions must be in"):
        cm.update(torch.full((1, 2, 2), 4), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        cm.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), V))  # all void
    with pytest.raises(ValueError, match="empty"):
        cm.compute()
