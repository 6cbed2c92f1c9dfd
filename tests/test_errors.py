"""Error messages as the CLI prints them: one line, even for errors raised in DataLoader workers."""

from __future__ import annotations

import pytest
import torch

from raredet.cli import main
from raredet.errors import ConfigError, DataError, user_message

MESSAGE = "/data/train.json, image id 4: image file /data/a.jpg does not exist; check the image directory"


class Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        raise DataError(MESSAGE)


@pytest.fixture(scope="module")
def worker_error() -> DataError:
    """The DataError as torch re-raises it in the main process from a DataLoader worker."""
    loader = torch.utils.data.DataLoader(Broken(), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    return info.value


def test_worker_error_keeps_only_the_original_message(worker_error):
    assert "Traceback" in str(worker_error)  # torch's text: the worker's whole traceback
    assert user_message(worker_error) == MESSAGE + " (in DataLoader worker process 0)"


def test_plain_error_message_unchanged():
    assert user_message(ConfigError("a.config: x: bad")) == "a.config: x: bad"


def test_cli_prints_worker_errors_as_one_line(worker_error, monkeypatch, capsys):
    def fake_stats(path, out):
        raise worker_error

    monkeypatch.setattr("raredet.commands.stats.stats_for_config", fake_stats)
    assert main(["stats", "--pipeline_config_path", "x.config"]) == 2
    assert capsys.readouterr().err == f"raredet stats: error: {MESSAGE} (in DataLoader worker process 0)\n"
