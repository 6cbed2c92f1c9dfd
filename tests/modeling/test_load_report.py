"""LoadReport's one-line summary, written out by hand: counts, parts, the TF convention, shape mismatches."""

from __future__ import annotations

from raredet.modeling.load_report import LoadReport


def test_summary_counts_each_list():
    report = LoadReport(loaded=["a", "b"], missing=["c"], unexpected=[], shape_mismatch=[])
    assert report.summary() == "loaded 2, missing 1, unexpected 0, shape mismatch 0"


def test_parts_say_what_was_left_at_its_initialiser():
    parts = {"backbone": (262, 262), "fpn": (3, 10), "box_predictor": (0, 60)}
    report = LoadReport(loaded=["a"], parts=parts, convention="tf")
    assert report.summary() == (
        "loaded 1, missing 0, unexpected 0, shape mismatch 0; backbone 262/262 loaded, fpn 3/10 loaded "
        "(the rest left at its initialiser), box_predictor 0/60 loaded (left at its initialiser); computing "
        "with TF's conventions (TF 'SAME' padding, the TF OD API's input normalisation)")


def test_shape_mismatches_list_both_shapes_and_count_the_rest():
    names = [f"t{i}" for i in range(8)]
    report = LoadReport(shape_mismatch=names, mismatched_shapes={n: ((3, 4), (5, 4)) for n in names})
    shown = ", ".join(f"t{i} (file [3, 4], model [5, 4])" for i in range(6))
    assert report.mismatch_details() == f"not loaded, shape differs: {shown} and 2 more"
    assert report.summary().endswith(f"shape mismatch 8; not loaded, shape differs: {shown} and 2 more")
    assert LoadReport(shape_mismatch=["x"]).mismatch_details(limit=1) == \
        "not loaded, shape differs: x (file [], model [])"
