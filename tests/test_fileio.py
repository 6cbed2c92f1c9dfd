import json
import os

import pytest

from raredet.fileio import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "report.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.txt"]


def test_interrupted_write_keeps_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"mAP": 0.5})

    def fail_half_way(f):
        f.write(b'{"mAP": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail_half_way)
    assert json.loads(target.read_text()) == {"mAP": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_written_file_has_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
