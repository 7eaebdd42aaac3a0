"""The bundle contract: loading, validation, and the exact errors a user sees."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge_mer.bundle import Bundle, subset_key
from edge_mer.cli import main
from edge_mer.errors import BundleError
from edge_mer.modality import Modality

from bundle_fixture import LABELS, make_tiny_bundle


@pytest.fixture
def bundle_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "bundle")


def _edit_manifest(root, fn):
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_load_valid_bundle_and_run_it(bundle_dir):
    import onnxruntime as ort

    b = Bundle.load(bundle_dir)
    assert b.labels == LABELS
    assert b.modalities == (Modality.AUDIO,)
    assert b.window().hop_s == 0.5
    assert b.feature_cfg("audio").n_mels == 128
    precision, entry = b.encoder_variant("audio")
    assert precision == "fp32"
    enc = ort.InferenceSession(str(b.path(entry)), providers=["CPUExecutionProvider"])
    feat = enc.run(None, {"logmel": np.zeros((1, 128, 50), np.float32)})[0]
    head = ort.InferenceSession(str(b.path(b.head(["audio"]))), providers=["CPUExecutionProvider"])
    probs = head.run(None, {"features": feat})[0]
    assert probs.shape == (1, 8) and abs(probs.sum() - 1) < 1e-5
    assert b.head(["audio", "text"]) is None


def test_subset_key_is_canonical():
    assert subset_key(["text", "audio"]) == "audio+text"
    assert subset_key([Modality.FACE, "landmarks", "audio"]) == "face+landmarks+audio"


def test_missing_bundle_dir(tmp_path):
    with pytest.raises(BundleError) as err:
        Bundle.load(tmp_path / "nope")
    assert str(err.value) == f"bundle {tmp_path / 'nope'}: not found"


def test_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"empty: no manifest.json \(a bundle is a directory with manifest.json\)$"):
        Bundle.load(tmp_path / "empty")


def test_missing_file(bundle_dir):
    (bundle_dir / "heads" / "audio.onnx").unlink()
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle_dir)
    assert str(err.value) == f"bundle {bundle_dir}: missing file heads/audio.onnx (listed in manifest.json at heads.audio)"


def test_checksum_mismatch(bundle_dir):
    path = bundle_dir / "encoders" / "audio.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle_dir)
    msg = str(err.value)
    assert msg.startswith(f"bundle {bundle_dir}: checksum mismatch for encoders/audio.fp32.onnx (manifest ")
    assert msg.endswith("): the file was changed or corrupted")
    Bundle.load(bundle_dir, verify_checksums=False)  # --no-verify still reads it


def test_unknown_schema_version(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle_dir)
    assert str(err.value) == (
        f"bundle {bundle_dir}: unknown schema_version 99 (this edge-mer reads 1); upgrade edge-mer or re-export the bundle"
    )


def test_incomplete_manifest(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m.pop("labels"))
    with pytest.raises(BundleError, match=r": manifest.json is incomplete: missing 'labels'$"):
        Bundle.load(bundle_dir)


def test_modality_without_encoder(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["modalities"].append("face"))
    with pytest.raises(BundleError, match=r": modality 'face' has no entry in 'encoders'$"):
        Bundle.load(bundle_dir)


def test_path_escaping_bundle_is_refused(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["heads"]["audio"].update(file="../outside.onnx"))
    with pytest.raises(BundleError, match=r"file path '../outside.onnx' must be relative and inside the bundle"):
        Bundle.load(bundle_dir)


def test_invalid_json(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest.json is not valid JSON"):
        Bundle.load(bundle_dir)


def test_cli_info(bundle_dir, capsys):
    assert main(["info", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "name        tiny-test-bundle" in out
    assert "modalities  audio" in out
    assert "encoder     audio: tiny_projection, 16-d; fp32" in out


def test_cli_info_tampered_is_one_line_error(bundle_dir, capsys):
    (bundle_dir / "heads" / "audio.onnx").write_bytes(b"tampered")
    assert main(["info", str(bundle_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch for heads/audio.onnx" in err


def test_copy_of_bundle_still_loads(bundle_dir, tmp_path):
    # Bundles are relocatable: paths are relative to the bundle directory.
    dst = tmp_path / "moved"
    shutil.copytree(bundle_dir, dst)
    assert Bundle.load(dst).name == "tiny-test-bundle"
