"""cli.main: the verbs it offers, help without a verb, and every user error as one line with exit code 2."""

from __future__ import annotations

import re

import pytest

from raredet.cli import main

VERBS = ["config", "evaluate-detections", "compare", "eval", "stats", "synth", "init", "train", "predict",
         "export", "demo", "inspect-checkpoint"]


def test_no_verb_prints_help_and_each_verb_has_its_own(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: raredet") and all(verb in out for verb in VERBS)
    for verb in VERBS:
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0 and capsys.readouterr().out.startswith(f"usage: raredet {verb}")


def test_a_verb_with_subcommands_but_none_given_prints_its_help_and_fails(capsys):
    assert main(["config"]) == 2
    assert "check" in capsys.readouterr().out


def test_a_user_error_is_one_line_naming_the_verb(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "nope.config")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raredet config: error: ") and err.count("\n") == 1 and "nope.config" in err


def test_an_unknown_verb_is_a_usage_error_listing_exactly_the_verbs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'trian'" in err
    choices = re.search(r"\(choose from (.*)\)", err).group(1)
    assert re.findall(r"'([^']+)'", choices) == VERBS
