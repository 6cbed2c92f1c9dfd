"""report.html is self-contained and renders in headless Chromium with every image loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from raredet.evaluation.options import EvalOptions
from raredet.evaluation.pipeline import evaluate_detections
from raredet.evaluation.report import Example

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Injected into a copy of the report: records script errors and checks every <img> once loaded.
PROBE_HEAD = ("<script>window.__errs=[];window.addEventListener('error',function(e){"
              "window.__errs.push(String(e.message||e.target&&e.target.src||'error'))},true);</script>")
PROBE_TAIL = ("<script>window.addEventListener('load',function(){var imgs=document.images,bad=0;"
              "for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)bad++;}"
              "var d=document.createElement('div');d.id='probe';d.textContent='images='+imgs.length+"
              "' broken='+bad+' errors='+window.__errs.length;document.body.appendChild(d);});</script>")


def tiny_run(out: Path) -> None:
    gt = {"images": [{"id": 1}, {"id": 2}],
          "categories": [{"id": 1, "name": "part"}, {"id": 2, "name": "crack"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]},
                          {"id": 2, "image_id": 2, "category_id": 2, "bbox": [30, 30, 10, 8]}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [5, 4, 20, 20], "score": 0.8},
            {"image_id": 2, "category_id": 1, "bbox": [30, 30, 10, 8], "score": 0.6}]
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    examples = [Example(image, np.array([[4, 4, 24, 24]]), np.array([0]), np.array([[5, 4, 25, 24]]),
                        np.array([0.8]), np.array([0]), "image 1")]
    weights = [{"index": 1, "id": 2, "name": "crack", "count": 1, "weight": 8.0, "source": "given"}]
    evaluate_detections(gt, dets, out_dir=out, options=EvalOptions(min_score_threshold=0.5),
                        class_weights=weights, examples=examples)


def test_report_is_self_contained(tmp_path: Path) -> None:
    tiny_run(tmp_path)
    text = (tmp_path / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 4  # 3 plots + 1 example
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "crack" in text and "8.0" in text  # the class weights table


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (.ci/run installs it)")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    tiny_run(tmp_path)
    text = (tmp_path / "report.html").read_text()
    probe = tmp_path / "probe.html"
    text = text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>")
    probe.write_text(text)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<div id="probe">images=(\d+) broken=(\d+) errors=(\d+)</div>', dom)
    assert found, f"probe did not run; chromium printed: {dom[:500]!r}"
    assert found.groups() == ("4", "0", "0")


def test_panel_draws_ground_truth_left_and_confident_detections_right() -> None:
    from raredet.evaluation.report import PALETTE, example_panel

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    ex = Example(image, np.array([[8, 8, 40, 40]]), np.array([1]), np.array([[8, 8, 40, 40], [2, 2, 6, 6]]),
                 np.array([0.9, 0.2]), np.array([2, 0]), "x")
    panel = np.asarray(example_panel(ex, ["a", "b", "c"], 0.5))
    zoom, right = 4, 64 * 4 + 6  # 64 px images are drawn 4x; the right panel starts after a 6 px gap
    assert panel.shape == (256, 2 * 256 + 6, 3)
    assert tuple(panel[20 * zoom, 8 * zoom]) == PALETTE[1]  # GT box edge, class 1's colour
    assert tuple(panel[20 * zoom, right + 8 * zoom]) == PALETTE[2]  # detection at 0.9, class 2
    assert tuple(panel[4 * zoom, right + 2 * zoom]) == (0, 0, 0)  # the 0.2 detection is not drawn
