"""Bad input ends with one 'error:' line naming the problem and a non-zero exit; no traceback."""

import pytest

from pipelines.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), err
    assert match in lines[-1], lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, match", [
    (["run", "breakhis", "--set", "train.epoch=3"],
     "unknown config key 'train.epoch' in --set; did you mean train.epochs"),
    (["run", "breakhis", "--set", "data.task=subtypes"], "choose one of binary, subtype"),
    (["run", "breakhis", "--set", "train.epochs=-1"], "greater than 0"),
    (["run", "breakhis", "--set", "model.backbone=efficientnet_b9"], "unknown backbone 'efficientnet_b9'"),
    (["run", "breakhis", "--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
    (["run", "breakhs"], "unknown task 'breakhs'; did you mean breakhis"),
    (["run", "breakhis", "--device", "tpu"], "bad --device 'tpu'"),
    (["run", "breakhis", "--demo", "--set", "model.backbone=efficientformer_l1"],
     "efficientformer_l1 takes 224x224 inputs only, not 96; set the image size to 224"),
    (["eval", "."], "is not a run folder"),
    (["export", "."], "is not a run folder"),
    (["frobnicate"], "invalid choice"),
])
def test_user_mistakes(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    if "--data-root" not in argv and argv[0] == "run":
        argv = [*argv, "--data-root", str(tmp_path)]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, match)


def test_bad_data_roots(capsys, tmp_path, tiny_tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = ["--output", str(tmp_path / "runs")]
    code, _, err = run_cli(capsys, "run", "breakhis", "--data-root", str(tmp_path / "missing"), *out)
    assert_one_line_error(code, err, "data root not found")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "run", "breakhis", "--data-root", str(tmp_path / "empty"), *out)
    assert_one_line_error(code, err, "no BreaKHis tree under")
    victim = next(tiny_tree.rglob("*-002.png"))
    victim.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, err = run_cli(capsys, "run", "breakhis", "--data-root", str(tiny_tree), *out)
    assert_one_line_error(code, err, "-002.png is not an image file")
    victim.rename(victim.with_name("photo.png"))
    code, _, err = run_cli(capsys, "run", "breakhis", "--data-root", str(tiny_tree), *out)
    assert_one_line_error(code, err, "unexpected file name 'photo.png'")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "breakhis" in out and "efficientnet_b7" in out
    code, out, _ = run_cli(capsys, "list", "backbones")
    assert code == 0 and "efficientvim_m4" in out and "native/efficientvim" in out and "224 px only" in out
    code, out, _ = run_cli(capsys, "list", "keys", "breakhis")
    assert code == 0 and "init_from:" in out
