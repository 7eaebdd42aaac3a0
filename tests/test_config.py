"""Config loading: strict types, unknown keys, missing files, overrides, round trip."""

from __future__ import annotations

import pytest

from edge_mer.cli import main
from edge_mer.config import Config, dump_toml, load_config, save_config
from edge_mer.errors import ConfigError

from conftest import REPO


def test_defaults_file_matches_code(tmp_path):
    # configs/default.toml lists every key; loading it changes nothing.
    assert load_config([REPO / "configs" / "default.toml"]) == Config()


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlrr = 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value).startswith(f"{path}: unknown key 'train.lrr' (known in [train]: modalities, optimizer, lr,")


def test_unknown_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown section 'trian' \(known: audio, face,"):
        load_config([path])


def test_wrong_type_names_file_key_and_value(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nlr = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}: 'train.lr' must be float, got str 'fast'"


def test_bool_is_not_an_int(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nbatch_size = true\n")
    with pytest.raises(ConfigError, match="'train.batch_size' must be int, got bool True"):
        load_config([path])


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}: config file not found"


def test_yaml_and_toml_and_overrides_in_order(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text("[train]\nlr = 0.5\nbatch_size = 8\n[loss]\npairs = ['audio-face']\n")
    b = tmp_path / "b.yaml"
    b.write_text("train:\n  lr: 0.25\nface:\n  thresholds: [0.5, 0.6, 0.7]\n")
    cfg = load_config([a, b], ["train.batch_size=4", "runtime.backend=tensorrt", "text.vosk_model=None"])
    assert cfg.train.lr == 0.25 and cfg.train.batch_size == 4
    assert cfg.loss.pairs == ("audio-face",)
    assert cfg.face.thresholds == (0.5, 0.6, 0.7)
    assert cfg.runtime.backend == "tensorrt"
    assert cfg.text.vosk_model is None


def test_override_errors():
    with pytest.raises(ConfigError, match=r"^--set train.lrr=1: unknown key 'train.lrr'"):
        load_config([], ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"^--set train.lr=abc: 'train.lr' must be float, got str 'abc'$"):
        load_config([], ["train.lr=abc"])
    with pytest.raises(ConfigError, match=r"^--set trainlr: expected section.key=value$"):
        load_config([], ["trainlr"])


def test_tuple_length_is_checked():
    with pytest.raises(ConfigError, match="'face.thresholds' must be list of float"):
        load_config([], ["face.thresholds=[0.5, 0.6]"])


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_saved_config_round_trips(tmp_path):
    cfg = load_config([], ["train.lr=0.123", "text.vosk_model='/models/vosk'", "loss.pairs=['audio-text']"])
    path = save_config(cfg, tmp_path)
    assert path.name == "run_config.toml"
    assert load_config([path]) == cfg
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_config_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[runtime]\nsmoothing = 2\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"edge-mer: error: {path}: unknown key 'runtime.smoothing'")


def test_cli_config_prints_resolved(capsys):
    assert main(["config", "--set", "window.hop_s=0.25"]) == 0
    out = capsys.readouterr().out
    assert "[window]\nwindow_s = 2.0\nhop_s = 0.25\n" in out
    assert dump_toml(Config()).count("[") >= 10


@pytest.mark.parametrize("override, valid", [
    ("face.scale_factor=1.5", "0 < x < 1"),
    ("face.scale_factor=0", "0 < x < 1"),
    ("face.min_face_size_px=5", ">= 12"),
    ("face.detect_every_n=0", ">= 1"),
    ("face.min_face_fraction=1.5", "0 to 1"),
    ("face.thresholds=[0.6, 0.7, 7.0]", "0 to 1"),
    ("runtime.threads=-2", "0 to 256"),
    ("runtime.threads=1000000", "0 to 256"),  # a typo must not start a million threads
    ("runtime.queue_size=0", "1 to 100000"),
    ("runtime.drop_policy='middle'", "one of oldest, newest"),
    ("runtime.vad_threshold=2", "0 to 1"),
    ("window.window_s=0", "0 < x <= 600"),
    ("window.window_s=1e6", "0 < x <= 600"),
    ("window.hop_s=-0.5", "> 0"),
])
def test_out_of_range_override_names_key_value_and_range(override, valid):
    key = override.split("=", 1)[0]
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    message = str(err.value)
    assert message.startswith(f"--set {override}: {key} = "), message
    assert message.endswith(f"is out of range (valid: {valid})"), message


def test_out_of_range_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "far.toml"
    path.write_text("[face]\ndetect_every_n = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert str(err.value) == f"{path}: face.detect_every_n = 0 is out of range (valid: >= 1)"
    # A later --set that puts it back in range does not rescue the file: each step is checked.
    with pytest.raises(ConfigError):
        load_config([path], ["face.detect_every_n=5"])


def test_out_of_range_bundle_window_and_features(tmp_path):
    import json

    from run_fixtures import make_bundle

    from edge_mer.bundle import Bundle

    root = make_bundle(tmp_path / "b", ["audio"], [["audio"]], hop_s=0.0)
    with pytest.raises(ConfigError, match=r"window: window.hop_s = 0.0 is out of range \(valid: > 0\)"):
        Bundle.load(root).window()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["features"]["audio"]["n_mels"] = 0
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"features.audio: audio.n_mels = 0 is out of range \(valid: 1 to 1024\)"):
        Bundle.load(root).feature_cfg("audio")


def test_cli_out_of_range_is_one_line(capsys):
    assert main(["config", "--set", "face.scale_factor=1.2"]) == 2
    err = capsys.readouterr().err
    assert err == "edge-mer: error: --set face.scale_factor=1.2: face.scale_factor = 1.2 is out of range (valid: 0 < x < 1)\n"
