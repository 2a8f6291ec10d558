"""The `reprotune` command: subcommands with examples in their help, one clear line for a mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprotune import cli


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_has_help_with_an_example(name: str, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: reprotune {name}") and f"examples:\n  reprotune {name}" in out


def test_the_command_lists_its_subcommands_and_catches_a_typo(capsys):
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name}" in listed for name in cli.COMMANDS) and "dvc repro" in listed
    assert cli.main([]) == 2  # nothing asked: the usage, and a failing status for scripts
    assert cli.main(["predcit"]) == 2
    assert "unknown command 'predcit'; did you mean 'predict'?" in capsys.readouterr().err


def test_doctor_outside_a_project_warns_and_does_not_fail(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["doctor", "--no-weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_check = {line.split()[1]: line.split()[0] for line in lines if line.strip()}
    assert by_check["versions"] == "ok" and by_check["params"] == "warn" and by_check["mlflow"] == "warn"
    assert by_check["dvc"] == "warn"
    assert not (tmp_path / "mlflow.db").exists()  # looking for a store never creates one


def test_doctor_fails_on_bad_params(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("train_head: {Cee: 1}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["doctor", "--no-weights"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  params" in out


def test_doctor_checks_the_images_weights_when_params_yaml_is_set_for_images(
    tmp_path: Path, monkeypatch, capsys
):
    """backbone.input_size applies to images only: the doctor checks the image backbone and says the text
    one was not checked, rather than stopping on the text modality's refusal."""
    import yaml

    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"]["input_size"] = 96
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ok    weights (image)  tf_efficientnet_lite0" in out
    assert "skip  weights (text)   not checked: params.yaml does not fit texts" in out
    assert "backbone.input_size" in out
