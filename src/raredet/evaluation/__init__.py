"""raredet.evaluation: per-class evaluation of detections.

coco.py (COCO metrics through faster-coco-eval), voc.py (Pascal VOC AP), per_class.py (the per-class
table), plots.py (PR curves, confusion matrix, score histograms), report.py (report.html),
pipeline.py (all of it for one set of detections), compare.py (several runs side by side).
"""
