"""Dataset readers. Each yields :class:`~training.data.base.Clip` records; labels live apart from
the pretraining inputs (see training/data/base.py)."""
