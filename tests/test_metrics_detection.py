"""Detection metrics: hand-computed cases, an independent VOC implementation, and pycocotools."""

from __future__ import annotations

import contextlib
import io
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from blastscope.metrics.detection import (
    COCO_IOU_THRESHOLDS,
    ap_from_pr,
    box_iou,
    evaluate_detections,
)

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _pred(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64),
    }


def _gt(boxes, labels, difficult=None):
    d = {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
    }
    if difficult is not None:
        d["difficult"] = np.asarray(difficult, dtype=bool)
    return d


def _pycocotools(preds, gts, num_classes, *, difficult_as_ignored=False):
    """Per-class AP@0.5 and AP@[.5:.95] from pycocotools COCOeval (area 'all', maxDets 100).

    With ``difficult_as_ignored`` difficult boxes get area 0 and the area range is [1, 1e10], so
    pycocotools treats them as ignored boxes (not crowd) -- the documented meaning of difficult in
    the COCO-style AP.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts), start=1):
        images.append({"id": i, "width": 10000, "height": 10000})
        diff = g.get("difficult", np.zeros(len(g["labels"]), bool))
        for b, lab, d in zip(np.asarray(g["boxes"], np.float64), g["labels"], diff):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            area = 0.0 if (difficult_as_ignored and d) else w * h
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(lab) + 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": area,
                    "iscrowd": 0,
                }
            )
        for b, s, lab in zip(np.asarray(p["boxes"], np.float64), p["scores"], p["labels"]):
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(lab) + 1,
                    "score": float(s),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [100]
        ev.params.areaRng = [[1.0, 1e10]] if difficult_as_ignored else [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # (T, R, K, A=1, M=1), -1 where a class has no ground truth
    ap50, ap5095 = [], []
    for k in range(num_classes):
        pk = prec[:, :, k, 0, 0]
        ap50.append(math.nan if (pk[0] < 0).all() else float(pk[0].mean()))
        ap5095.append(math.nan if (pk < 0).all() else float(pk.mean()))
    return ap50, ap5095


def _voc_reference(preds, gts, cls, thr=0.5):
    """Independent, deliberately plain VOC all-point AP (devkit rule, continuous IoU, >= thr)."""
    npos = 0
    gt_by_img = {}
    for i, g in enumerate(gts):
        rows = []
        diff = g.get("difficult", [False] * len(g["labels"]))
        for b, lab, d in zip(g["boxes"], g["labels"], diff):
            if int(lab) == cls:
                rows.append([[float(v) for v in b], bool(d), False])
                npos += 0 if d else 1
        gt_by_img[i] = rows
    dets = []
    for i, p in enumerate(preds):
        for b, s, lab in zip(p["boxes"], p["scores"], p["labels"]):
            if int(lab) == cls:
                dets.append((-float(s), len(dets), i, [float(v) for v in b]))
    dets.sort()  # score descending, then input order
    tp, fp = [], []
    for _, _, i, b in dets:
        best, jbest = -1.0, -1
        for j, (g, _, _) in enumerate(gt_by_img[i]):
            iw = min(b[2], g[2]) - max(b[0], g[0])
            ih = min(b[3], g[3]) - max(b[1], g[1])
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            o = inter / union if union > 0 else 0.0
            if o > best:
                best, jbest = o, j
        if best >= thr:
            g = gt_by_img[i][jbest]
            if g[1]:
                continue
            if g[2]:
                tp.append(0)
                fp.append(1)  # noqa: E702
            else:
                g[2] = True
                tp.append(1)
                fp.append(0)  # noqa: E702
        else:
            tp.append(0)
            fp.append(1)  # noqa: E702
    if npos == 0:
        return math.nan
    ap, ctp, cfp, points = 0.0, 0, 0, []
    for t, f in zip(tp, fp):
        ctp += t
        cfp += f
        points.append((ctp / npos, ctp / (ctp + cfp)))
    prev_r = 0.0
    for k, (r, _) in enumerate(points):
        if r > prev_r:
            ap += (r - prev_r) * max(p for _, p in points[k:])
            prev_r = r
    return ap


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------

# Five cells in one image, 20 px apart; five detections ranked TP, FP, TP, FP, TP.
FIVE_GT = [[20 * i, 0, 20 * i + 10, 10] for i in range(5)]
FP_BOX = [0, 100, 10, 110]  # overlaps nothing
TFTFT = _pred([FIVE_GT[0], FP_BOX, FIVE_GT[1], FP_BOX, FIVE_GT[2]], [0.9, 0.8, 0.7, 0.6, 0.5], [0] * 5)


def test_voc07_and_all_point_differ_as_the_definitions_say():
    # ranked:    TP   FP   TP   FP   TP
    # recall:    .2   .2   .4   .4   .6
    # precision: 1    1/2  2/3  1/2  3/5
    # envelope:  1    2/3  2/3  3/5  3/5
    # all-point (VOC2010+): recall steps of .2 at ranks 1, 3, 5 -> .2*1 + .2*2/3 + .2*3/5 = 0.453333
    # 11-point (VOC2007):  r = 0, .1, .2 -> 1; r = .3, .4 -> 2/3; r = .5, .6 -> 3/5; r = .7...1 -> 0
    #                      (3 + 4/3 + 6/5) / 11 = 0.503030
    # COCO 101-point: r = 0..0.20 (21 points) -> 1; 0.21..0.40 (20) -> 2/3; 0.41..0.60 (20) -> 3/5;
    #                 0.61..1 (40) -> 0: (21 + 40/3 + 12) / 101 = 0.458746
    r = evaluate_detections([TFTFT], [_gt(FIVE_GT, [0] * 5)], ["blast"])
    assert r.ap_voc["blast"] == pytest.approx(0.2 + 0.2 * 2 / 3 + 0.2 * 3 / 5, abs=1e-12)
    assert r.ap_voc07["blast"] == pytest.approx((3 + 4 / 3 + 6 / 5) / 11, abs=1e-12)
    assert r.ap_coco["blast"] == pytest.approx((21 + 40 / 3 + 12) / 101, abs=1e-9)
    assert r.ap_voc07["blast"] - r.ap_voc["blast"] == pytest.approx(0.049697, abs=1e-6)
    assert (r.tp["blast"], r.fp["blast"], r.n_gt["blast"], r.n_det["blast"]) == (3, 2, 5, 5)
    np.testing.assert_allclose(r.curves["blast"].recall, [0.2, 0.2, 0.4, 0.4, 0.6])
    np.testing.assert_allclose(r.curves["blast"].precision, [1, 0.5, 2 / 3, 0.5, 0.6])
    # exact boxes: every IoU is 1, so AP@[.5:.95] equals AP@.5
    assert r.ap_coco_50_95["blast"] == pytest.approx(r.ap_coco["blast"], abs=1e-12)
    assert r.map_voc == r.ap_voc["blast"]
    # the same numbers straight from the curve
    rec, prec = [0.2, 0.2, 0.4, 0.4, 0.6], [1, 0.5, 2 / 3, 0.5, 0.6]
    assert ap_from_pr(rec, prec, "voc") == pytest.approx(r.ap_voc["blast"])
    assert ap_from_pr(rec, prec, "voc07") == pytest.approx(r.ap_voc07["blast"])


def test_voc07_recall_point_exactly_at_three_fifths_is_reached():
    # recall reaches exactly 3/5 with precision 1: the 11-point AP counts r = .6 (7 points of 11).
    # A port using np.arange(0, 1.1, 0.1) would compare 0.6 >= 0.6000000000000001 and count 6.
    assert ap_from_pr([0.2, 0.4, 0.6], [1.0, 1.0, 1.0], "voc07") == pytest.approx(7 / 11)
    assert ap_from_pr([0.2, 0.4, 0.6], [1.0, 1.0, 1.0], "voc") == pytest.approx(0.6)


def test_ap_from_pr_edge_cases_and_errors():
    assert ap_from_pr([], [], "voc") == 0.0
    assert ap_from_pr([], [], "voc07") == 0.0
    assert ap_from_pr([], [], "coco") == 0.0
    assert ap_from_pr([1.0], [1.0], "voc07") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="voc07"):
        ap_from_pr([0.5], [1.0], "voc12")
    with pytest.raises(ValueError, match="same length"):
        ap_from_pr([0.5, 1.0], [1.0], "voc")


def test_box_iou_continuous_without_plus_one():
    # [0,10]x[0,10] and [5,15]x[0,10]: 50 / 150. The VOC devkit's +1 would give 66/176 = 0.375.
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(1 / 3)
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0  # empty union


def test_difficult_boxes_are_neither_tp_nor_fp():
    # GT: two regular cells and one difficult. Detections by score:
    #   0.9 on the difficult cell  -> ignored (not counted at all)
    #   0.8 on cell A              -> TP
    #   0.7 nowhere                -> FP
    #   0.6 on the difficult again -> ignored (difficult boxes are never "used up")
    # n_pos = 2; kept ranks TP, FP: recall .5, .5; precision 1, .5 -> AP = .5 * 1 = 0.5 (all three)
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 0, 0], [False, False, True])]
    preds = [
        _pred(
            [[40, 0, 50, 10], [0, 0, 10, 10], [0, 50, 10, 60], [40, 1, 50, 10]],
            [0.9, 0.8, 0.7, 0.6],
            [0] * 4,
        )
    ]
    r = evaluate_detections(preds, gts, ["blast"])
    assert (r.n_gt["blast"], r.tp["blast"], r.fp["blast"]) == (2, 1, 1)
    assert r.ap_voc["blast"] == pytest.approx(0.5)
    # 11-point: r = 0 .. .5 -> 1 (6 points), rest 0
    assert r.ap_voc07["blast"] == pytest.approx(6 / 11)
    # COCO: recall thresholds 0 .. .50 (51 points) -> 1
    assert r.ap_coco["blast"] == pytest.approx(51 / 101, abs=1e-9)
    # the same ground truth without the difficult flag: the first detection becomes a TP
    gts[0]["difficult"][:] = False
    r2 = evaluate_detections(preds, gts, ["blast"])
    assert (r2.n_gt["blast"], r2.tp["blast"], r2.fp["blast"]) == (3, 2, 2)


def test_difficult_in_coco_style_matches_pycocotools_ignored_boxes():
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 0, 0], [False, False, True])]
    preds = [
        _pred(
            [[40, 0, 50, 10], [0, 0, 10, 10], [0, 50, 10, 60], [41, 1, 50, 10], [21, 0, 31, 10]],
            [0.9, 0.8, 0.7, 0.6, 0.5],
            [0] * 5,
        )
    ]
    ref50, ref5095 = _pycocotools(preds, gts, 1, difficult_as_ignored=True)
    r = evaluate_detections(preds, gts, ["blast"])
    assert r.ap_coco["blast"] == pytest.approx(ref50[0], abs=1e-12)
    assert r.ap_coco_50_95["blast"] == pytest.approx(ref5095[0], abs=1e-12)


def test_class_without_predictions_is_zero_and_class_without_gt_is_excluded():
    # classes: 0 blast (GT, perfect detection), 1 hem (GT, no detection), 2 other (no GT, one FP)
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 1])]
    preds = [_pred([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.4], [0, 2])]
    r = evaluate_detections(preds, gts, ["blast", "hem", "other"])
    assert r.ap_voc["blast"] == 1.0 and r.ap_voc07["blast"] == 1.0
    for ap in (r.ap_voc, r.ap_voc07, r.ap_coco, r.ap_coco_50_95):
        assert ap["hem"] == 0.0
        assert math.isnan(ap["other"])
    assert r.map_voc == pytest.approx(0.5)  # (1 + 0) / 2: "other" is left out, not counted as 0
    assert r.map_voc07 == pytest.approx(0.5)
    assert r.fp["other"] == 1 and r.n_gt["other"] == 0
    d = r.as_dict()
    assert d["map50_voc"] == pytest.approx(0.5) and math.isnan(d["ap50_voc.other"])
    assert all(type(v) is float for v in d.values())
    assert set(d) == {
        "map50_voc",
        "map50_voc07",
        "map50_coco",
        "map50_95_coco",
        *(f"{k}.{c}" for k in ("ap50_voc", "ap50_voc07", "ap50_coco", "ap50_95_coco") for c in ("blast", "hem", "other")),
    }


def test_empty_predictions_and_empty_images():
    gts = [_gt([[0, 0, 10, 10]], [0]), _gt(np.zeros((0, 4)), [])]
    preds = [_pred(np.zeros((0, 4)), [], []), _pred(np.zeros((0, 4)), [], [])]
    r = evaluate_detections(preds, gts, ["blast", "hem"])
    assert r.ap_voc["blast"] == 0.0 and r.ap_coco_50_95["blast"] == 0.0
    assert math.isnan(r.ap_voc["hem"])
    assert r.map_voc == 0.0
    # no ground truth anywhere: every AP and every mean is NaN
    r = evaluate_detections(preds[1:], gts[1:], ["blast"])
    assert math.isnan(r.map_voc) and math.isnan(r.map_coco_50_95)
    # no images at all
    r = evaluate_detections([], [], ["blast"])
    assert r.n_images == 0 and math.isnan(r.map_voc07)


def test_duplicate_detection_is_a_false_positive():
    # one cell detected twice: TP then FP -> recall 1 at rank 1, AP 1; the FP is counted
    r = evaluate_detections(
        [_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.8], [0, 0])],
        [_gt([[0, 0, 10, 10]], [0])],
        ["blast"],
    )
    assert (r.tp["blast"], r.fp["blast"]) == (1, 1)
    assert r.ap_voc["blast"] == 1.0
    # ranked the other way round (duplicate scored higher): the looser box takes the cell
    r = evaluate_detections(
        [_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.8, 0.9], [0, 0])],
        [_gt([[0, 0, 10, 10]], [0])],
        ["blast"],
    )
    assert r.ap_voc["blast"] == 1.0
    # at IoU .95 the looser box (IoU .9) misses and the exact one comes second: recall 1 at
    # precision 1/2 -> AP .5
    r = evaluate_detections(
        [_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.8, 0.9], [0, 0])],
        [_gt([[0, 0, 10, 10]], [0])],
        ["blast"],
        iou_threshold=0.95,
    )
    assert r.ap_voc["blast"] == pytest.approx(0.5)
    assert "map95_voc" in r.as_dict()


def test_voc_devkit_rule_versus_coco_rule_on_overlapping_cells():
    # Cells A = [0,0,10,10] and B = [2,0,12,10] overlap. Detection 1 (0.9) is exactly A.
    # Detection 2 (0.8) = [0.5,0,10.5,10]: IoU with A = 95/105 = 0.905, with B = 85/115 = 0.739.
    # VOC devkit: its best box is A, already taken -> FP.  recall .5 @ 1, then .5 @ .5 -> AP .5
    # COCO: A is taken, B is free with IoU .739 >= .5 -> TP. recall 1 @ precision 1 -> AP ~1
    gts = [_gt([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    preds = [_pred([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], [0.9, 0.8], [0, 0])]
    r = evaluate_detections(preds, gts, ["blast"])
    assert r.ap_voc["blast"] == pytest.approx(0.5)
    assert r.ap_coco["blast"] == pytest.approx(1.0, abs=1e-12)
    # COCO over .50:.95: det 2 is a TP while t <= .739 (.50, .55, .60, .65, .70: 5 of 10
    # thresholds; AP 1), else FP (recall stops at .5: 51 of 101 points at precision 1)
    expected = (5 * 1.0 + 5 * 51 / 101) / 10
    assert r.ap_coco_50_95["blast"] == pytest.approx(expected, abs=1e-9)
    ref50, ref5095 = _pycocotools(preds, gts, 1)
    assert r.ap_coco["blast"] == pytest.approx(ref50[0], abs=1e-12)
    assert r.ap_coco_50_95["blast"] == pytest.approx(ref5095[0], abs=1e-12)


def test_coco_iou_tie_goes_to_the_last_box_like_pycocotools():
    # A = [0,0,10,10], B = [2,0,12,10]. Detection 1 = [1,0,11,10] has IoU 90/110 with both:
    # pycocotools gives it the LAST box, B. Detection 2 = A exactly then takes A (IoU 1) at every
    # threshold. Had detection 1 taken A, detection 2 would get B (IoU .667) and fail at t >= .7.
    # Detection 1 is a TP for t <= .818 (.50 ... .80: 7 thresholds), so at .85, .90, .95 the ranks
    # are FP, TP: recall .5 then... precision 1/2 at recall .5 -> 51 points * 0.5.
    gts = [_gt([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    preds = [_pred([[1, 0, 11, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    r = evaluate_detections(preds, gts, ["blast"])
    expected = (7 * 1.0 + 3 * (51 * 0.5) / 101) / 10
    assert r.ap_coco_50_95["blast"] == pytest.approx(expected, abs=1e-9)
    _, ref5095 = _pycocotools(preds, gts, 1)
    assert r.ap_coco_50_95["blast"] == pytest.approx(ref5095[0], abs=1e-12)


def test_coco_keeps_the_100_best_detections_per_image_and_class():
    # one cell; 150 detections, the correct one ranked 120th.
    # VOC (no cap): recall 1 at precision 1/120 -> AP = 1/120.  COCO: it is cut -> AP 0.
    boxes = [[100 + i, 100, 105 + i, 105] for i in range(150)]
    scores = np.linspace(0.99, 0.01, 150)
    boxes[119] = [0, 0, 10, 10]
    r = evaluate_detections([_pred(boxes, scores, [0] * 150)], [_gt([[0, 0, 10, 10]], [0])], ["blast"])
    assert r.ap_voc["blast"] == pytest.approx(1 / 120)
    assert r.ap_coco["blast"] == 0.0
    ref50, _ = _pycocotools([_pred(boxes, scores, [0] * 150)], [_gt([[0, 0, 10, 10]], [0])], 1)
    assert ref50[0] == 0.0


def test_min_score_drops_detections_and_labels_the_keys():
    # TFTFT with scores .9 .8 .7 .6 .5; min_score .65 keeps TP, FP, TP:
    # recall .2 .2 .4, precision 1 .5 2/3 -> all-point .2*1 + .2*2/3 = 0.333333
    gts = [_gt(FIVE_GT, [0] * 5)]
    r = evaluate_detections([TFTFT], gts, ["blast"], min_score=0.65)
    assert r.ap_voc["blast"] == pytest.approx(0.2 + 0.2 * 2 / 3)
    assert r.n_det["blast"] == 3 and r.min_score == 0.65
    d = r.as_dict()
    assert d["map50_voc@min_score=0.65"] == pytest.approx(r.map_voc)
    assert "ap50_voc.blast@min_score=0.65" in d
    assert not any("@" not in k for k in d)  # no unlabelled key can be mistaken for the standard one
    assert "map50_voc" in evaluate_detections([TFTFT], gts, ["blast"]).as_dict()


def test_bad_inputs_raise_value_error_naming_the_problem():
    g = [_gt([[0, 0, 10, 10]], [0])]
    with pytest.raises(ValueError, match="label 3"):
        evaluate_detections([_pred([[0, 0, 1, 1]], [0.5], [3])], g, ["a", "b"])
    with pytest.raises(ValueError, match="one of each per image"):
        evaluate_detections([], g, ["a"])
    with pytest.raises(ValueError, match="scores"):
        evaluate_detections([{"boxes": [[0, 0, 1, 1]], "labels": [0]}], g, ["a"])
    with pytest.raises(ValueError, match="xmax < xmin"):
        evaluate_detections([_pred([[5, 0, 1, 1]], [0.5], [0])], g, ["a"])
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_detections([_pred([[0, 0, 1, 1]], [0.5], [0])], g, ["a"], iou_threshold=50)


# ---------------------------------------------------------------------------------------------
# real BCCD ground truth with realistic predictions, against pycocotools and a plain VOC
# ---------------------------------------------------------------------------------------------

BCCD_CLASSES = ["RBC", "WBC", "Platelets"]


def _read_bccd(bccd, n_images=100, xmls=None):
    gts = []
    for xml in xmls if xmls is not None else sorted((bccd / "Annotations").glob("*.xml"))[:n_images]:
        root = ET.parse(xml).getroot()
        boxes, labels = [], []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            # VOC pixels are 1-based and inclusive: the continuous 0-based box is
            # [xmin - 1, ymin - 1, xmax, ymax]
            box = [xmin - 1, ymin - 1, xmax, ymax]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # a handful of BCCD boxes are degenerate
            boxes.append(box)
            labels.append(BCCD_CLASSES.index(obj.findtext("name").strip()))
        gts.append(_gt(np.array(boxes).reshape(-1, 4), labels))
    return gts


def _fake_predictions(gts, seed=0):
    """Detector-like output: jittered boxes, misses, duplicates, wrong classes, false positives.

    Scores are rounded to 2 decimals so that many ties (within and across images) exercise the
    stable ordering rules too.
    """
    rng = np.random.default_rng(seed)
    preds = []
    for g in gts:
        boxes, scores, labels = [], [], []
        for b, lab in zip(g["boxes"].astype(np.float64), g["labels"]):
            if rng.random() < 0.15:
                continue  # missed cell
            w, h = b[2] - b[0], b[3] - b[1]
            for _ in range(1 + (rng.random() < 0.08)):  # occasional duplicate
                jb = b + rng.normal(0, 0.08, 4) * [w, h, w, h]
                jb[2:] = np.maximum(jb[2:], jb[:2] + 1)
                boxes.append(jb)
                scores.append(np.clip(rng.beta(5, 2), 0, 1))
                labels.append(lab if rng.random() < 0.9 else rng.integers(0, 3))
        for _ in range(rng.integers(0, 4)):  # false positives somewhere in the smear
            xy = rng.uniform(0, 560, 2)
            boxes.append(np.concatenate([xy, xy + rng.uniform(15, 80, 2)]))
            scores.append(rng.beta(2, 5))
            labels.append(rng.integers(0, 3))
        preds.append(_pred(np.array(boxes).reshape(-1, 4), np.round(scores, 2), labels))
    return preds


@pytest.fixture(scope="module")
def bccd_case(bccd):
    gts = _read_bccd(bccd, 100)
    assert sum(len(g["labels"]) for g in gts) > 1000
    return gts, _fake_predictions(gts)


def test_bccd_coco_ap_matches_pycocotools(bccd_case):
    gts, preds = bccd_case
    r = evaluate_detections(preds, gts, BCCD_CLASSES)
    ref50, ref5095 = _pycocotools(preds, gts, 3)
    for k, c in enumerate(BCCD_CLASSES):
        assert r.ap_coco[c] == pytest.approx(ref50[k], abs=1e-4)
        assert r.ap_coco_50_95[c] == pytest.approx(ref5095[k], abs=1e-4)
    assert r.map_coco == pytest.approx(np.mean(ref50), abs=1e-4)
    assert r.map_coco_50_95 == pytest.approx(np.mean(ref5095), abs=1e-4)
    # realistic, not degenerate: the numbers are neither 0 nor 1 and differ between IoU regimes
    assert 0.3 < r.map_coco_50_95 < r.map_coco < 0.99


def test_bccd_coco_ap_with_difficult_boxes_matches_pycocotools_ignored(bccd_case):
    gts, preds = bccd_case
    rng = np.random.default_rng(3)
    gts = [dict(g, difficult=rng.random(len(g["labels"])) < 0.1) for g in gts]
    r = evaluate_detections(preds, gts, BCCD_CLASSES)
    ref50, ref5095 = _pycocotools(preds, gts, 3, difficult_as_ignored=True)
    for k, c in enumerate(BCCD_CLASSES):
        assert r.ap_coco[c] == pytest.approx(ref50[k], abs=1e-4)
        assert r.ap_coco_50_95[c] == pytest.approx(ref5095[k], abs=1e-4)


def test_bccd_voc_ap_matches_an_independent_implementation(bccd_case):
    gts, preds = bccd_case
    rng = np.random.default_rng(4)
    gts = [dict(g, difficult=rng.random(len(g["labels"])) < 0.05) for g in gts]
    for thr in (0.5, 0.75):
        r = evaluate_detections(preds, gts, BCCD_CLASSES, iou_threshold=thr)
        for k, c in enumerate(BCCD_CLASSES):
            assert r.ap_voc[c] == pytest.approx(_voc_reference(preds, gts, k, thr), abs=1e-9)
    # the min_score=0.3 (ImageAI-style) numbers are those of the pre-filtered predictions
    r = evaluate_detections(preds, gts, BCCD_CLASSES, min_score=0.3)
    kept = [
        _pred(
            p["boxes"][p["scores"] >= 0.3],
            p["scores"][p["scores"] >= 0.3],
            p["labels"][p["scores"] >= 0.3],
        )
        for p in preds
    ]
    for k, c in enumerate(BCCD_CLASSES):
        assert r.ap_voc[c] == pytest.approx(_voc_reference(kept, gts, k), abs=1e-9)


def test_coco_thresholds_are_pycocotools_own():
    from pycocotools.cocoeval import Params

    np.testing.assert_array_equal(COCO_IOU_THRESHOLDS, Params(iouType="bbox").iouThrs)


# ---------------------------------------------------------------------------------------------
# real predictions of a trained detector on BCCD's test list (tests/data, made by
# scripts/make_bccd_prediction_fixture.py from a yolov3-tiny trained on BCCD's train list)

REAL_PREDICTIONS = Path(__file__).parent / "data" / "bccd_test_predictions.json"


@pytest.fixture(scope="module")
def bccd_real_case(bccd):
    import json

    doc = json.loads(REAL_PREDICTIONS.read_text())
    xmls = [bccd / "Annotations" / Path(i["file"]).with_suffix(".xml").name for i in doc["images"]]
    gts = _read_bccd(bccd, xmls=xmls)
    preds = [
        _pred(np.array(i["boxes"], np.float64).reshape(-1, 4), i["scores"], [BCCD_CLASSES.index(c) for c in i["labels"]])
        for i in doc["images"]
    ]
    return gts, preds


def test_real_bccd_detector_predictions_coco_ap_matches_pycocotools(bccd_real_case):
    gts, preds = bccd_real_case
    assert len(gts) == 72 and sum(len(p["labels"]) for p in preds) > 500
    r = evaluate_detections(preds, gts, BCCD_CLASSES)
    ref50, ref5095 = _pycocotools(preds, gts, 3)
    for k, c in enumerate(BCCD_CLASSES):
        assert r.ap_coco[c] == pytest.approx(ref50[k], abs=1e-4), c
        assert r.ap_coco_50_95[c] == pytest.approx(ref5095[k], abs=1e-4), c
    assert r.map_coco == pytest.approx(np.mean(ref50), abs=1e-4)
    assert r.map_coco_50_95 == pytest.approx(np.mean(ref5095), abs=1e-4)
    # a trained detector: WBC (large, distinct) is found far better than platelets
    assert r.ap_coco["WBC"] > 0.8 > r.ap_coco["Platelets"]
