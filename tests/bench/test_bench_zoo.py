"""bench_zoo's CPU kind and its table's ratio to the TF OD API figure for that kind (issue #31, item 4)."""

from __future__ import annotations

from bench.bench_zoo import TF_REFERENCE, _table, cpu_kind


def test_cpu_kind_from_flags():
    assert cpu_kind({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}) == "avx512_amx"
    assert cpu_kind({"avx2", "avx512f", "avx512_bf16"}) == "avx512"
    assert cpu_kind({"sse4_2", "avx2", "fma"}) == "avx2"
    assert cpu_kind({"sse4_2"}) == "other"


def _summary(step: float) -> dict:
    return {"this tree": {"step_s_median": step, "step_s_runs": [step], "cpu_s_per_step_median": 1.5,
                          "gflop_per_s": 40.0 / step, "load": [(0.1, 1.0)], "precision": "fp32"}}


def test_the_table_gives_the_ratio_to_the_tf_figure_for_the_cpu_kind_and_the_precision():
    assert TF_REFERENCE["avx512_amx"]["tf_od_api_s_per_step"] == 0.717  # issue #31's median of 3 runs
    lines = _table(_summary(0.5), 40.0, 13, 3, kind="avx512_amx")
    row = next(line for line in lines if line.startswith("| raredet this tree"))
    assert row.endswith("| fp32 | 0.500 | 1.50 | 80.0 | 0.70x |")  # 0.5 / 0.717 = 0.697
    assert any(line.startswith("| TF OD API 2.15.1 (Intel Xeon") and "| 0.717 |" in line for line in lines)


def test_the_avx2_figure_is_the_median_of_the_three_tf_runs_tf_speed_recorded():
    import json
    from pathlib import Path

    result = json.loads((Path(__file__).parents[2] / "bench/results/tf_speed_avx2.json").read_text())
    tf_runs = sorted(r["step_101_200_s"] for r in result["rows"] if r["run"] == "tf")
    assert tf_runs == [2.094, 2.124, 2.662]  # the TF OD API's own "Step 200 per-step time" lines
    assert TF_REFERENCE["avx2"]["tf_od_api_s_per_step"] == tf_runs[1]
    lines = _table(_summary(1.0), 40.0, 13, 3, kind="avx2")
    row = next(line for line in lines if line.startswith("| raredet this tree"))
    assert row.endswith("| 0.47x |")  # 1.0 / 2.124 = 0.471


def test_a_cpu_kind_without_a_tf_figure_prints_no_ratio_and_says_how_to_measure_one():
    lines = _table(_summary(0.5), 40.0, 13, 3, kind="other")
    row = next(line for line in lines if line.startswith("| raredet this tree"))
    assert row.endswith("| 0.500 | 1.50 | 80.0 | - |")
    assert not any(line.startswith("| TF OD API") for line in lines)
    assert any("No TF OD API figure for this CPU kind (other)" in line and "bench/tf_speed.py" in line
               for line in lines)
