"""The model bundle: the one contract between training, export and the runtime.

A bundle is a directory with ``manifest.json`` and the files it lists::

    manifest.json
    encoders/audio.fp32.onnx, encoders/audio.int8.onnx, ...
    heads/audio+text.onnx, heads/audio.onnx, ...
    text/tokenizer.json
    detectors/mtcnn_pnet.onnx, ...

Every file the manifest names appears in a *file entry*, a JSON object with at least ``file`` (a
path relative to the bundle) and ``sha256``; model file entries also carry ``inputs``/``outputs``
(``name``, ``shape``, ``dtype``) and ``precision``. :meth:`Bundle.load` refuses a bundle whose schema
version it does not know, whose manifest lacks a required field, or whose files are missing or do
not match their checksums, each with a one-line :class:`~edge_mer.errors.BundleError`.

>>> b = Bundle.load("models/default")            # doctest: +SKIP
>>> b.labels[:3], b.modalities                   # doctest: +SKIP
(['neutral', 'calm', 'happy'], (<Modality.AUDIO: 'audio'>, <Modality.TEXT: 'text'>))

Manifest fields (schema version 1):

- ``schema_version`` (int), ``name`` (str), ``created_utc`` (str), ``edge_mer_version`` (str)
- ``modalities``: the encoders present, e.g. ``["audio", "text"]``
- ``labels``: class names, in the order of every head's output
- ``window``: ``{"window_s": float, "hop_s": float}``
- ``features``: per modality, the exact feature settings its encoder was trained with (the
  ``audio``/``face``/``landmarks``/``text`` config sections)
- ``encoders``: per modality ``{"name", "feature_dim", "variants": {precision: file entry},
  "default_precision", "config"}``; the text encoder adds ``"tokenizer": file entry``; optional
  ``input_norm`` (``{"type": "per_user", ...file entry}``, ``mean``/``std`` per input channel, e.g.
  log-mel bin): the encoder was pretrained on per-speaker standardised inputs, and the runtime
  standardises its input by running per-user statistics seeded with these population ones
- ``heads``: per modality subset key (``"audio"``, ``"audio+text"``; modalities in ``modalities``
  order) ``{"type", "modalities", ...file entry}``: input ``features`` [batch, sum of feature_dims]
  (features concatenated in that order), output ``probs`` [batch, len(labels)]. Optional
  ``input_norm``: ``{"type": "per_user", ...file entry}``, an ``.npz`` with ``mean`` and ``std``
  [sum of feature_dims]: the head was fitted on per-speaker standardised features, and the runtime
  standardises its input by running per-user statistics seeded with these population ones
  (:mod:`edge_mer.stream.usernorm`)
- ``detectors`` (optional): ``{"mtcnn": {"pnet"|"rnet"|"onet": file entry}, "landmarks": file entry,
  "vad": file entry}``; ``vad`` is the Silero VAD ONNX model (speech per window, 8/16 kHz,
  :mod:`edge_mer.stream.speech`)
- ``engines`` (optional): TensorRT engines ``[{"target", "precision", "tensorrt_version",
  "device", ...file entry}]``; engines only run on the device they were built for
- ``provenance``: ``{"data", "protocol", "commit", "metrics", "license", ...}``
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from edge_mer.errors import BundleError
from edge_mer.io import atomic_write_text, sha256_file
from edge_mer.modality import Modality

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
USER_KIND = "user"  # manifest "kind" of a user bundle (edge-mer adapt)

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "name": str,
    "modalities": list,
    "labels": list,
    "window": dict,
    "features": dict,
    "encoders": dict,
    "heads": dict,
    "provenance": dict,
}


def subset_key(modalities: Any) -> str:
    """Canonical head key for a set of modalities: names in Modality order joined by '+'."""
    present = {Modality(m) for m in modalities}
    return "+".join(m.value for m in Modality if m in present)


def iter_file_entries(node: Any, where: str = "") -> Iterator[tuple[str, dict]]:
    """Yield ``(json_path, entry)`` for every file entry (a dict with ``file``) in the manifest."""
    if isinstance(node, dict):
        if "file" in node and isinstance(node["file"], str):
            yield where, node
        for key, value in node.items():
            if key in ("inputs", "outputs"):
                continue
            yield from iter_file_entries(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_file_entries(value, f"{where}[{i}]")


def _resolve_inside(root: Path, rel: str, name: str) -> Path:
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise BundleError(f"bundle {name}: file path '{rel}' must be relative and inside the bundle")
    return root / rel


def _verify_files(root: Path, manifest: dict, name: str, verify_checksums: bool) -> None:
    for where, entry in iter_file_entries(manifest):
        file_path = _resolve_inside(root, entry["file"], name)
        if not file_path.is_file():
            raise BundleError(f"bundle {name}: missing file {entry['file']} (listed in {MANIFEST} at {where})")
        if "sha256" not in entry:
            raise BundleError(f"bundle {name}: {where} lists {entry['file']} without a sha256")
        if verify_checksums:
            actual = sha256_file(file_path)
            if actual != entry["sha256"]:
                raise BundleError(
                    f"bundle {name}: checksum mismatch for {entry['file']} "
                    f"(manifest {entry['sha256'][:12]}…, file {actual[:12]}…): the file was changed or corrupted"
                )


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle. Build one with :meth:`load`."""

    root: Path
    manifest: dict[str, Any]
    # A user bundle (``edge-mer adapt``): its own directory, holding only what was adapted; the
    # encoders, heads and detectors are the base bundle's (``root``), referenced by checksum.
    user_root: Path | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike, verify_checksums: bool = True) -> "Bundle":
        root = Path(path)
        name = str(path)
        if not root.exists():
            raise BundleError(f"bundle {name}: not found")
        if root.is_file() and root.name == MANIFEST:
            root = root.parent
        manifest_path = root / MANIFEST
        if not root.is_dir() or not manifest_path.is_file():
            raise BundleError(f"bundle {name}: no {MANIFEST} (a bundle is a directory with {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"bundle {name}: {MANIFEST} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
        if isinstance(manifest, dict) and manifest.get("kind") == USER_KIND:
            return cls._load_user(root, manifest, name, verify_checksums)
        validate_manifest(manifest, name)
        _verify_files(root, manifest, name, verify_checksums)
        return cls(root=root, manifest=manifest)

    @classmethod
    def _load_user(cls, root: Path, manifest: dict, name: str, verify_checksums: bool) -> "Bundle":
        """A user bundle: its base bundle loaded (and its manifest's checksum matched), the
        adaptation's own files verified; the result reads like the base with ``adaptation``."""
        base = manifest.get("base")
        adaptation = manifest.get("adaptation")
        if not isinstance(base, dict) or not isinstance(base.get("path"), str) or not isinstance(base.get("manifest_sha256"), str):
            raise BundleError(f"bundle {name}: a user bundle needs 'base': {{\"path\", \"manifest_sha256\"}}")
        if not isinstance(adaptation, dict) or not isinstance(adaptation.get("heads"), dict) or not adaptation["heads"]:
            raise BundleError(f"bundle {name}: a user bundle needs 'adaptation': {{\"heads\": {{modality: file entry}}}}")
        base_root = Path(base["path"]) if os.path.isabs(base["path"]) else (root / base["path"])
        if not (base_root / MANIFEST).is_file():
            raise BundleError(f"bundle {name}: its base bundle {base_root} is not there (adapted on {base.get('name', '?')})")
        actual = sha256_file(base_root / MANIFEST)
        if actual != base["manifest_sha256"]:
            raise BundleError(f"bundle {name}: its base bundle {base_root} changed since the adaptation (manifest "
                              f"{actual[:12]}…, adapted on {base['manifest_sha256'][:12]}…): run edge-mer adapt again")
        parent = cls.load(base_root, verify_checksums)
        labels = parent.manifest["labels"]
        for key, entry in adaptation["heads"].items():
            if key not in parent.manifest["heads"]:
                raise BundleError(f"bundle {name}: adaptation.heads.{key}: the base bundle has no {key} head")
            if not isinstance(entry, dict) or "file" not in entry:
                raise BundleError(f"bundle {name}: adaptation.heads.{key} has no 'file'")
        _verify_files(root, adaptation, name, verify_checksums)
        merged = dict(parent.manifest)
        merged["adaptation"] = adaptation
        merged["user"] = {k: manifest[k] for k in ("name", "created_utc", "edge_mer_version") if k in manifest}
        if adaptation.get("labels", labels) != labels:
            raise BundleError(f"bundle {name}: adapted for labels {adaptation.get('labels')}, the base has {labels}")
        return cls(root=parent.root, manifest=merged, user_root=root)

    # ------------------------------------------------------------------ accessors

    def user_path(self, entry: dict) -> Path:
        """A file of the user bundle (its adaptation)."""
        if self.user_root is None:
            raise BundleError(f"bundle {self.root}: not a user bundle")
        return _resolve_inside(self.user_root, entry["file"], str(self.user_root))

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return tuple(Modality(m) for m in self.manifest["modalities"])

    def window(self):
        from edge_mer.config import section_from_dict

        return section_from_dict("window", self.manifest["window"], f"bundle {self.root}: window")

    def feature_cfg(self, modality: Modality | str):
        """The config section (AudioCfg, FaceCfg, ...) the modality's encoder was trained with."""
        from edge_mer.config import section_from_dict

        key = Modality(modality).value
        data = self.manifest["features"].get(key)
        if data is None:
            raise BundleError(f"bundle {self.root}: no feature settings for {key}")
        return section_from_dict(key, data, f"bundle {self.root}: features.{key}")

    def path(self, entry: dict) -> Path:
        return _resolve_inside(self.root, entry["file"], str(self.root))

    def encoder(self, modality: Modality | str) -> dict:
        key = Modality(modality).value
        try:
            return self.manifest["encoders"][key]
        except KeyError:
            raise BundleError(f"bundle {self.root}: has no {key} encoder (it has: {', '.join(self.manifest['encoders'])})") from None

    def encoder_variant(self, modality: Modality | str, precision: str = "auto") -> tuple[str, dict]:
        """``(precision, file entry)`` of a modality's encoder; ``auto`` takes the default."""
        enc = self.encoder(modality)
        variants = enc["variants"]
        if precision == "auto":
            precision = enc.get("default_precision") or next(iter(variants))
        if precision not in variants:
            raise BundleError(
                f"bundle {self.root}: {Modality(modality).value} encoder has no {precision} variant "
                f"(it has: {', '.join(variants)})"
            )
        return precision, variants[precision]

    def head(self, modalities: Any) -> dict | None:
        """The head for exactly these modalities, or None when the bundle has none for them."""
        return self.manifest["heads"].get(subset_key(modalities))

    def engines(self) -> list[dict]:
        return list(self.manifest.get("engines", []))

    def describe(self) -> str:
        """Human-readable summary for ``edge-mer info``."""
        m = self.manifest
        lines = [
            f"bundle      {self.root}",
            f"name        {m['name']}",
            f"schema      {m['schema_version']} (edge-mer {m.get('edge_mer_version', '?')}, created {m.get('created_utc', '?')})",
            f"modalities  {', '.join(m['modalities'])}",
            f"labels      {', '.join(m['labels'])}",
            f"window      {m['window'].get('window_s')} s, hop {m['window'].get('hop_s')} s",
        ]
        for key, enc in m["encoders"].items():
            variants = ", ".join(
                f"{p} ({_size(self.path(v))})" for p, v in enc.get("variants", {}).items()
            )
            norm = "; per-user normalised input" if "input_norm" in enc else ""
            lines.append(f"encoder     {key}: {enc.get('name', '?')}, {enc.get('feature_dim', '?')}-d; {variants}{norm}")
        for key, head in m["heads"].items():
            norm = ", per-user normalised input" if "input_norm" in head else ""
            lines.append(f"head        {key}: {head.get('type', '?')} ({head['file']}){norm}")
        for det, entry in m.get("detectors", {}).items():
            files = [e["file"] for _, e in iter_file_entries(entry)]
            lines.append(f"detector    {det}: {', '.join(files)}")
        for eng in m.get("engines", []):
            lines.append(
                f"engine      {eng.get('target')}: {eng.get('precision')} TensorRT {eng.get('tensorrt_version')} on {eng.get('device')}"
            )
        prov = m["provenance"]
        for key in ("data", "protocol", "commit", "license"):
            if key in prov:
                lines.append(f"{key:<11} {prov[key]}")
        for key, value in prov.get("metrics", {}).items():
            lines.append(f"metric      {key}: {value}")
        base = {k: v for k, v in m.items() if k not in ("adaptation", "user")}
        total = sum(self.path(e).stat().st_size for _, e in iter_file_entries(base))
        lines.append(f"size        {total / 1e6:.1f} MB in {len(list(iter_file_entries(base)))} files")
        if self.user_root is not None:
            a = m["adaptation"]
            counts = ", ".join(f"{k} {v}" for k, v in a.get("moments_per_label", {}).items())
            lines[0:0] = [f"user bundle {self.user_root} ({m['user'].get('name', '?')}, adapted {m['user'].get('created_utc', '?')})",
                          f"adapted on  {a.get('moments', '?')} labelled moments ({counts}) from {a.get('source', '?')}; "
                          f"heads {', '.join(a['heads'])}; stores features and labels only"
                          + ("" if not a.get("recorded") else f"; media recorded in {a['recorded']}"),
                          *[f"person      {k}: per-user statistics start from {e['user_statistics_windows']} windows of this person"
                            for k, e in a["heads"].items() if e.get("user_statistics_windows")],
                          f"base        ({m['name']}, manifest {a.get('base_manifest_sha256', '')[:12]}…):"]
        return "\n".join(lines)


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size / 1e6:.1f} MB"
    except OSError:
        return "missing"


def validate_manifest(manifest: Any, name: str) -> None:
    """Schema checks that need no files. Raises BundleError with one line."""
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {name}: {MANIFEST} must be a JSON object")
    version = manifest.get("schema_version")
    if version is None:
        raise BundleError(f"bundle {name}: {MANIFEST} has no schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"bundle {name}: unknown schema_version {version!r} (this edge-mer reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); upgrade edge-mer or re-export the bundle"
        )
    for key, tp in _REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"bundle {name}: {MANIFEST} is incomplete: missing '{key}'")
        if not isinstance(manifest[key], tp):
            raise BundleError(f"bundle {name}: {MANIFEST} '{key}' must be {tp.__name__}, got {type(manifest[key]).__name__}")
    try:
        mods = [Modality(m) for m in manifest["modalities"]]
    except ValueError as exc:
        raise BundleError(f"bundle {name}: {exc}") from None
    if not mods:
        raise BundleError(f"bundle {name}: 'modalities' is empty")
    if not manifest["labels"] or not all(isinstance(x, str) for x in manifest["labels"]):
        raise BundleError(f"bundle {name}: 'labels' must be a non-empty list of names")
    for m in mods:
        enc = manifest["encoders"].get(m.value)
        if not isinstance(enc, dict):
            raise BundleError(f"bundle {name}: modality '{m.value}' has no entry in 'encoders'")
        if not isinstance(enc.get("variants"), dict) or not enc["variants"]:
            raise BundleError(f"bundle {name}: encoders.{m.value} has no 'variants'")
        for precision in enc["variants"]:
            if precision not in PRECISIONS:
                raise BundleError(f"bundle {name}: encoders.{m.value} has unknown precision '{precision}'")
        _check_input_norm(enc.get("input_norm"), f"bundle {name}: encoders.{m.value}.input_norm")
        if m.value not in manifest["features"]:
            raise BundleError(f"bundle {name}: modality '{m.value}' has no feature settings in 'features'")
    if not manifest["heads"]:
        raise BundleError(f"bundle {name}: 'heads' is empty: a bundle needs at least one classifier head")
    for key, head in manifest["heads"].items():
        if not isinstance(head, dict) or "file" not in head:
            raise BundleError(f"bundle {name}: heads.{key} has no 'file'")
        _check_input_norm(head.get("input_norm"), f"bundle {name}: heads.{key}.input_norm")
    detectors = manifest.get("detectors", {})
    if not isinstance(detectors, dict):
        raise BundleError(f"bundle {name}: 'detectors' must be an object, got {type(detectors).__name__}")
    vad = detectors.get("vad")
    if vad is not None and not (isinstance(vad, dict) and isinstance(vad.get("file"), str)):
        raise BundleError(f"bundle {name}: detectors.vad must be a file entry ({{\"file\": ..., \"sha256\": ...}})")
    for key in ("window_s", "hop_s"):
        if not isinstance(manifest["window"].get(key), (int, float)):
            raise BundleError(f"bundle {name}: window.{key} must be a number")


def _check_input_norm(norm: Any, where: str) -> None:
    if norm is not None and not (isinstance(norm, dict) and norm.get("type") == "per_user" and isinstance(norm.get("file"), str)):
        raise BundleError(f"{where} must be {{\"type\": \"per_user\", \"file\": ...}}")


def file_entry(root: str | os.PathLike, rel: str, **extra: Any) -> dict:
    """A file entry for ``root/rel`` with its checksum (and any model metadata in ``extra``)."""
    entry = {"file": rel, "sha256": sha256_file(Path(root) / rel)}
    entry.update(extra)
    return entry


def refresh_checksums(root: str | os.PathLike, manifest: dict) -> None:
    """Recompute ``sha256`` of every file entry in place (after a file was rewritten)."""
    for _, entry in iter_file_entries(manifest):
        entry["sha256"] = sha256_file(Path(root) / entry["file"])


def write_manifest(root: str | os.PathLike, manifest: dict) -> Path:
    """Validate and write ``manifest.json`` atomically into a bundle directory, then load it
    back with checksums verified (so a writer can never produce a bundle the loader refuses)."""
    root = Path(root)
    validate_manifest(manifest, str(root))
    path = root / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    Bundle.load(root)
    return path
