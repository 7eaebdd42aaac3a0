"""The runtime never imports torch: importing edge_mer, `edge-mer --help` and `edge-mer info`
run in a fresh interpreter and torch must not be in sys.modules afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from bundle_fixture import make_tiny_bundle

from conftest import REPO


def _run_and_list_modules(code: str) -> set[str]:
    probe = textwrap.dedent(code) + "\nimport sys\nprint('MODULES', ' '.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("MODULES ")][-1]
    return set(line.split()[1:])


def test_import_edge_mer_is_torch_free():
    mods = _run_and_list_modules(
        """
        import edge_mer, edge_mer.cli, edge_mer.bundle, edge_mer.config, edge_mer.media, edge_mer.features
        """
    )
    assert "edge_mer.cli" in mods
    assert not {m for m in mods if m == "torch" or m.startswith("torch.")}


def test_help_and_info_are_torch_free(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b")
    mods = _run_and_list_modules(
        f"""
        from edge_mer.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        assert main(["info", {str(bundle)!r}]) == 0
        """
    )
    assert not {m for m in mods if m == "torch" or m.startswith("torch.")}


def test_every_runtime_module_is_torch_free():
    # Import every module under edge_mer/ (the whole runtime), not only the CLI path.
    mods = _run_and_list_modules(
        """
        import importlib, pkgutil, edge_mer
        for info in pkgutil.walk_packages(edge_mer.__path__, "edge_mer."):
            if info.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except ImportError as exc:  # optional back-ends (tensorrt, dlib) may be absent
                if "torch" in str(exc):
                    raise
        """
    )
    assert not {m for m in mods if m == "torch" or m.startswith("torch.")}
