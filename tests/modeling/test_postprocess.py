"""NMS against a brute-force greedy reference, score converters, and the batched post-processor."""

import math

import pytest
import torch

from raredet.modeling.postprocess import (
    BatchNonMaxSuppression,
    batched_nms,
    clip_boxes,
    convert_scores,
    nms,
)


def _iou_pair(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_nms(boxes, scores, groups, threshold):
    """Textbook greedy NMS with plain Python lists."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(groups[j] != groups[i] or _iou_pair(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def _random_boxes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 50
    wh = torch.rand(n, 2, generator=gen) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=gen)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed, threshold):
    boxes, scores = _random_boxes(60, seed)
    expected = _reference_nms(boxes.tolist(), scores.tolist(), [0] * 60, threshold)
    assert nms(boxes, scores, threshold).tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_matches_brute_force(seed):
    boxes, scores = _random_boxes(80, seed)
    groups = torch.randint(0, 3, (80,), generator=torch.Generator().manual_seed(seed))
    expected = _reference_nms(boxes.tolist(), scores.tolist(), groups.tolist(), 0.5)
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == expected


def test_chain_suppression_by_hand():
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C (B is removed by A).
    boxes = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [10.0, 0, 20, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]


def test_score_converters():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(convert_scores(logits, "SIGMOID"), torch.tensor([[0.5, 0.75]]))
    # Implicit background logit 0: exp(0)=1, exp(0)=1, exp(log 3)=3 -> [1/5, 3/5] for the two classes.
    torch.testing.assert_close(convert_scores(logits, "SOFTMAX"), torch.tensor([[0.2, 0.6]]))
    torch.testing.assert_close(convert_scores(logits, "IDENTITY", logit_scale=2.0), logits / 2)
    with pytest.raises(ValueError, match="SIGMOID"):
        convert_scores(logits, "SIGMOIDS")


def test_clip_boxes_per_image():
    boxes = torch.tensor([[[-5.0, 2, 50, 70]], [[-5.0, 2, 50, 70]]])
    sizes = torch.tensor([[60, 40], [100, 100]])
    assert clip_boxes(boxes, sizes).tolist() == [[[0, 2, 40, 60]], [[0, 2, 50, 70]]]


def _reference_batch(boxes, scores, post):
    """Per image, per class: threshold, greedy NMS, cap per class; then best overall, via lists."""
    out = []
    for b in range(boxes.shape[0]):
        dets = []
        for c in range(scores.shape[2]):
            s = scores[b, :, c].tolist()
            idx = [i for i in range(len(s)) if s[i] > post.score_threshold]
            kept = _reference_nms(
                [boxes[b, i].tolist() for i in idx], [s[i] for i in idx], [0] * len(idx), post.iou_threshold
            )[: post.max_detections_per_class]
            dets += [(s[idx[k]], c, idx[k]) for k in kept]
        dets.sort(key=lambda d: -d[0])
        out.append(dets[: post.max_total_detections])
    return out


def _assert_matches_reference(result, boxes, scores, post):
    """Each image's detections: the brute-force reference's, in order, then zero padding."""
    expected = _reference_batch(boxes, scores, post)
    for b in range(boxes.shape[0]):
        n = int(result["num_detections"][b])
        assert n == len(expected[b])
        assert result["detection_classes"][b, :n].tolist() == [d[1] for d in expected[b]]
        expected_scores = torch.tensor([d[0] for d in expected[b]])
        torch.testing.assert_close(result["detection_scores"][b, :n], expected_scores)
        torch.testing.assert_close(result["detection_boxes"][b, :n], boxes[b, [d[2] for d in expected[b]]])
        assert result["detection_scores"][b, n:].eq(0).all()


def test_batch_nms_matches_reference_per_class():
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 40, 2, generator=gen) * 40
    boxes = torch.cat([xy, xy + torch.rand(2, 40, 2, generator=gen) * 20 + 1], dim=-1)
    scores = torch.rand(2, 40, 3, generator=gen)
    post = BatchNonMaxSuppression(
        score_threshold=0.2, iou_threshold=0.4, max_detections_per_class=5, max_total_detections=12
    )
    result = post(boxes, scores)
    _assert_matches_reference(result, boxes, scores, post)
    assert result["detection_boxes"].shape == (2, 12, 4)


def test_class_agnostic_and_padding():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1.0, 0, 11, 10], [30.0, 30, 40, 40]]])
    scores = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.05, 0.3]]])
    post = BatchNonMaxSuppression(
        score_threshold=0.1, iou_threshold=0.5, max_total_detections=5, use_class_agnostic_nms=True
    )
    result = post(boxes, scores)
    # Anchor 1 (class 1, 0.8) overlaps anchor 0 (class 0, 0.9): suppressed across classes.
    assert result["num_detections"].tolist() == [2]
    assert result["detection_classes"][0, :2].tolist() == [0, 1]
    torch.testing.assert_close(result["detection_scores"][0], torch.tensor([0.9, 0.3, 0, 0, 0]))


@pytest.mark.parametrize("score_threshold", [0.0, 0.5, 0.9, 0.999])
def test_batch_nms_cut_after_the_last_valid_candidate_matches_reference(score_threshold):
    """Images with many, few and no candidates above the threshold in one batch: NMS runs on the
    candidates up to the last valid one of any image only, and still equals the brute-force reference
    (and a traced module, which keeps every candidate)."""
    gen = torch.Generator().manual_seed(7)
    xy = torch.rand(3, 300, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + torch.rand(3, 300, 2, generator=gen) * 25 + 1], dim=-1)
    scores = torch.rand(3, 300, 2, generator=gen) * torch.tensor([1.0, 0.95, 0.3])[:, None, None]
    post = BatchNonMaxSuppression(score_threshold=score_threshold, iou_threshold=0.5,
                                  max_detections_per_class=20, max_total_detections=30, pre_nms_top_k=500)
    result = post(boxes, scores)
    _assert_matches_reference(result, boxes, scores, post)
    assert result["detection_boxes"].shape == (3, 30, 4)

    class Module(torch.nn.Module):
        def forward(self, boxes, scores):
            out = post(boxes, scores)
            return out["detection_boxes"], out["detection_scores"], out["num_detections"]

    traced = torch.jit.trace(Module(), (boxes, scores), check_trace=False)
    for got, want in zip(traced(boxes, scores), (result["detection_boxes"], result["detection_scores"],
                                                 result["num_detections"]), strict=True):
        torch.testing.assert_close(got, want)
