"""The encoder interface and the name -> class registry."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from edge_mer.errors import ConfigError

_REGISTRY: dict[str, type["Encoder"]] = {}

E = TypeVar("E", bound=type["Encoder"])


class Encoder(nn.Module):
    """Base of every encoder: ``forward(**inputs) -> Tensor[B, feature_dim]`` (pre-projector).

    Subclasses set ``Cfg`` (their frozen config dataclass, which must have ``feature_dim``) and
    implement ``input_spec``; ``example_inputs`` builds random tensors from that spec.
    """

    Cfg: type = object
    name: str = ""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def feature_dim(self) -> int:
        return int(self.cfg.feature_dim)

    def input_spec(self) -> list[dict]:
        """``[{"name", "shape" (ints or symbolic names like "batch"), "dtype"}]``."""
        raise NotImplementedError

    def example_symbols(self) -> dict[str, int]:
        """Sizes given to the symbolic dimensions by :meth:`example_inputs` (besides "batch")."""
        return {}

    def example_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        sizes = {"batch": batch, **self.example_symbols()}
        gen = torch.Generator().manual_seed(0)
        out = {}
        for spec in self.input_spec():
            shape = [sizes[d] if isinstance(d, str) else d for d in spec["shape"]]
            if spec["dtype"] == "int64":
                out[spec["name"]] = torch.ones(shape, dtype=torch.int64)
            else:
                out[spec["name"]] = torch.rand(shape, generator=gen)
        return out


def register_encoder(name: str) -> Callable[[E], E]:
    """Class decorator: make ``cls`` buildable as ``build_encoder(name, cfg)``."""

    def wrap(cls: E) -> E:
        if name in _REGISTRY:
            raise ValueError(f"encoder '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def encoder_class(name: str) -> type["Encoder"]:
    """The registered class (its ``Cfg`` tells which settings it takes)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown encoder '{name}' (registered: {', '.join(list_encoders())})")
    return _REGISTRY[name]


def cfg_from_dict(cfg_cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build a frozen encoder config strictly: unknown keys and wrong types are ConfigErrors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cfg_cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(hints)})")
    values = {}
    for key, value in data.items():
        tp = hints[key]
        origin = typing.get_origin(tp)
        if origin is tuple and isinstance(value, (list, tuple)):
            value = tuple(value)
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif tp is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        base = origin or tp
        if isinstance(base, type) and not isinstance(value, base) or (base is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: '{key}' must be {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")
        values[key] = value
    return cfg_cls(**values)


def build_encoder(name: str, cfg: dict[str, Any] | None = None) -> Encoder:
    """A fresh (randomly initialised) encoder ``name`` with config ``cfg`` over its defaults."""
    cls = encoder_class(name)
    return cls(cfg_from_dict(cls.Cfg, cfg, f"encoder '{name}'"))


def encoder_cfg_dict(encoder: Encoder) -> dict[str, Any]:
    """The encoder's config as a plain JSON-friendly dict (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(encoder.cfg).items()}
