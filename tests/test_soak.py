"""The soak's short form (CI): ``edge-mer run`` replaying the bundled CREMA-D clip in a loop at
real speed for ~45 s, with the real MTCNN detector on every analysed frame; RSS must not grow by
5 % or more after warm-up. And ``edge-mer bench`` end to end on a small real bundle: its JSON
holds every stage the bundle has and the pipeline figures (no wall-clock limits are asserted:
speed is measured by the benchmarks, never tested)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from run_fixtures import export_mtcnn_once, make_bundle

from conftest import REPO
from edge_mer.cli import main

sys.path.insert(0, str(REPO))
SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    mtcnn = export_mtcnn_once(tmp_path_factory.mktemp("mtcnn"))
    return make_bundle(tmp_path_factory.mktemp("soak") / "b", ["audio"], [["audio"]], mtcnn_dir=mtcnn)


@pytest.mark.slow
def test_short_soak_memory_stays_flat(bundle, tmp_path, capsys):
    from benchmarks import soak

    out = tmp_path / "soak.json"
    # Warm-up 20 s: RSS settles over the first two passes of the 12.9 s clip (ONNX Runtime arenas, the
    # MTCNN pyramid's cached resampling matrices, both stage threads' malloc arenas), then stays flat.
    rc = soak.main(["--bundle", str(bundle), "--clip", str(SAMPLE), "--seconds", "45", "--warmup", "20",
                    "--sample-s", "0.5", "--set", "runtime.threads=1", "--json", str(out)])
    result = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "| events |" in table
    # 45 s of media in 2 s windows every 0.5 s: one event per window, none lost without a count.
    expected = int((result["wall_s"] - 2.0) / 0.5)
    dropped = result["drops"].get("windows", 0)
    assert result["events"] + dropped >= 0.8 * expected, result
    assert result["unparsed_lines"] == 0
    assert len(result["rss_samples"]) > 40
    assert result["growth_pct"] is not None and result["growth_pct"] < 5.0, (result["rss_baseline_mb"], result["rss_final_mb"])
    assert rc == 0 and result["verdict"] == "pass"


@pytest.mark.slow
def test_bench_writes_every_stage_and_the_pipeline_figures(bundle, tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    md = tmp_path / "bench" / "bench.md"
    rc = main(["bench", "--bundle", str(bundle), "--clip", str(SAMPLE), "--repeats", "3", "--warmup", "1",
               "--replays", "2", "--no-asr", "--json", str(out), "--markdown", str(md), "--set", "runtime.threads=1"])
    printed = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.read_text())
    assert md.read_text() == printed
    assert (out.parent / "bench.json.config.toml").is_file()
    assert {"logmel", "face_detect", "encoder_audio[fp32]", "fusion"} <= set(result["stages"])
    for st in result["stages"].values():
        assert st["count"] == 3 and 0 < st["p50_ms"] <= st["p95_ms"]
    (run,) = result["pipeline"]  # the fixture's audio encoder has one precision
    assert run["precision"] == "auto" and run["asr"] is None  # as shipped
    assert run["events"] == 22  # 12.9 s clip, 2 s windows, 0.5 s hop
    assert 0 < run["time_to_first_event_s"] < run["wall_s"]
    assert run["peak_rss_mb"] > 50 and run["steady_rtf"] > 0
    # Two replays: the table's figures are the lower middle one's, every replay's RTF is kept.
    assert len(run["steady_rtf_runs"]) == 2 and run["steady_rtf"] == min(run["steady_rtf_runs"])
    assert "the median of 2 replays" in printed
    assert {"features", "fusion", "face_detect"} <= set(run["stages"])
    assert len(result["loadavg_before"]) == 3 and result["machine"]["cores"] >= 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.json.config.toml", "bench.md"]
