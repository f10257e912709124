"""Full-size tooling at tiny dims: the random AED-L maker, the external-data (> 2 GB) path
through quantize_dynamic, ORT and sherpa-onnx, and the side-by-side CPU benchmark.

Thresholds: int8 against its fp32 input as in test_stage_int8 (cross K/V relative error
< 0.05, teacher-forced logits cosine > 0.999); sherpa-onnx's greedy tokens identical to
ours on the same audio; an allocation of 256 MiB seen by the memory sampler within 10%.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stage_helpers import probe_parity

from optimize import contract, graph
from optimize.evaluate.memory import PeakRss, rss_bytes
from optimize.runtime.recognizer import Recognizer
from optimize.runtime.search import DecodeConfig
from optimize.runtime.tokens import TokenTable

torch = pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_ARGS = ["--d-model", "64", "--heads", "4", "--enc-layers", "2", "--dec-layers", "2", "--kernel-size", "5", "--vocab", "60"]


@pytest.fixture(scope="module")
def make_aed_l():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import make_aed_l

        yield make_aed_l
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_peak_rss_sees_a_short_allocation():
    with PeakRss() as mem:
        with mem.phase("alloc") as p:
            block = np.ones(256 << 20, dtype=np.uint8)
            del block
        with mem.phase("idle"):
            pass
    grew = p.peak_bytes - p.start_bytes
    assert 0.9 * (256 << 20) < grew < 1.1 * (256 << 20) + (32 << 20)
    assert mem.phases["idle"].peak_bytes < p.peak_bytes


def test_release_memory_frees_a_model_held_by_a_reference_cycle():
    """As OnnxModel holds a loaded graph: only the cycle collector frees it; the stages call release_memory between graphs."""
    import gc

    import onnx

    class Editor:  # a graph editor that refers to itself, like onnxruntime.transformers' OnnxModel
        def __init__(self, model):
            self.model, self.me = model, self

    gc.disable()  # the collector runs only when asked, so the test sees what release_memory does
    try:
        before = rss_bytes()
        weights = onnx.numpy_helper.from_array(np.ones(64 << 20, dtype=np.float32), "w")  # 256 MiB
        editor = Editor(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [weights])))
        del weights, editor
        held = rss_bytes() - before
        graph.release_memory()
        freed = before + held - rss_bytes()
    finally:
        gc.enable()
    assert held > 200 << 20 and freed > 200 << 20


def _child_peak() -> int:
    from optimize.evaluate.memory import max_rss_bytes

    return max_rss_bytes()


def test_child_peak_is_its_own_not_the_parents():
    # how the pipeline measures stages and evaluations: a spawned child; ru_maxrss would
    # report the parent's 1 GiB (Linux keeps it across fork and execve), VmHWM does not
    import multiprocessing

    held = np.ones(1 << 30, dtype=np.uint8)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peak = pool.apply(_child_peak)
    assert 10 << 20 < peak < 512 << 20
    del held


def test_random_checkpoint_is_official_and_never_emits_eos(make_aed_l, tmp_path):
    from tests.test_export import official_model

    dims = make_aed_l.dims_of(make_aed_l.parse_args([str(tmp_path), *TINY_ARGS]))
    make_aed_l.make_checkpoint(tmp_path / "ckpt", dims, seed=3)
    off = official_model(tmp_path / "ckpt")  # strict load with fireredasr's own classes
    eos = off.decoder.eos_id
    assert not off.decoder.tgt_word_emb.weight[eos].any()
    feats = torch.randn(1, 300, 80)
    with torch.no_grad():
        enc, _, mask = off.encoder(feats, torch.tensor([300]))
        hyp = off.decoder.batch_beam_search(enc, mask, beam_size=1, decode_max_len=20)[0][0]["yseq"]
    assert len(hyp) == 20 and eos not in hyp.tolist()  # ran every step: eos never won
    assert make_aed_l.parameter_count(tmp_path / "ckpt")["total"] == sum(p.numel() for p in off.parameters())


def test_release_2_checkpoint_loads_in_fireredasr2_and_counts_the_ctc_head(make_aed_l, tmp_path):
    from official_v2 import official_model_v2

    args = make_aed_l.parse_args([str(tmp_path), *TINY_ARGS, "--release", "2", "--with-ctc"])
    make_aed_l.make_checkpoint(tmp_path / "ckpt", make_aed_l.dims_of(args), seed=3, release=args.release)
    off = official_model_v2(tmp_path / "ckpt")  # strict load with fireredasr2's own classes, CTC head included
    count = make_aed_l.parameter_count(tmp_path / "ckpt")
    assert count["ctc"] == sum(p.numel() for p in off.ctc.parameters())
    assert count["total"] == sum(p.numel() for p in off.parameters())
    assert args.with_ctc


@pytest.fixture(scope="module", params=["int8 external", "int8 inline"])
def external_pairs(request, tiny_ckpt, tmp_path_factory, make_aed_l):
    """fp32 pair exported through the > 2 GB branch (forced), and its int8 version.

    "int8 inline" is the AED-L encoder's case: external fp32 input, single-file int8 output.
    """
    from optimize.export import exporter

    root = tmp_path_factory.mktemp("external")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(graph, "PROTO_LIMIT_BYTES", 0)
        exporter.export_checkpoint(tiny_ckpt, root / "fp32")
        mp.setattr(graph, "PROTO_LIMIT_BYTES", 0 if request.param == "int8 external" else 10**9)
        record = make_aed_l.quantize_pair(root / "fp32", root / "int8", "QInt8", True)
    return root / "fp32", root / "int8", record, request.param == "int8 external"


def test_external_data_export_survives_quantize_dynamic(tiny_pair, external_pairs):
    fp32, int8, record, int8_external = external_pairs
    for fname in (contract.ENCODER_FILE, contract.DECODER_FILE):
        assert [p.name for p in graph.external_files(fp32 / fname)] == [fname + ".data"]
        want = [fname + ".data"] if int8_external else []
        assert [p.name for p in graph.external_files(int8 / fname)] == want
        assert record[fname]["external_data"] is int8_external
        ref, got = graph.load(fp32 / fname, load_external=False), graph.load(int8 / fname, load_external=False)
        assert graph.metadata(got) == graph.metadata(ref)  # byte-for-byte, no `onnx.infer`
        assert graph.op_counts(got).get("MatMulInteger", 0) > 0
    assert sorted(p.name for p in int8.iterdir()) == sorted(
        ["encoder.onnx", "decoder.onnx", "tokens.txt"] + (["encoder.onnx.data", "decoder.onnx.data"] if int8_external else [])
    )
    assert probe_parity(tiny_pair, fp32).cross_kv_rel_error < 1e-6  # external data changes nothing
    p = probe_parity(fp32, int8)
    assert p.cross_kv_rel_error < 0.05
    assert p.teacher_forced_cosine > 0.999


def _sherpa_tokens(pair: Path, samples: np.ndarray) -> list[str]:
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    rec = sherpa_onnx.OfflineRecognizer.from_fire_red_asr(
        encoder=str(pair / contract.ENCODER_FILE), decoder=str(pair / contract.DECODER_FILE),
        tokens=str(pair / contract.TOKENS_FILE), num_threads=1,
    )  # fmt: skip
    stream = rec.create_stream()
    stream.accept_waveform(16000, samples)
    rec.decode_stream(stream)
    return list(stream.result.tokens)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_sherpa_onnx_loads_external_data_from_another_directory(external_pairs, which, tmp_path, monkeypatch):
    pair = external_pairs[0] if which == "fp32" else external_pairs[1]
    monkeypatch.chdir(tmp_path)  # external data must resolve next to the .onnx, not in the cwd
    samples = (np.random.default_rng(1).standard_normal(3 * 16000) * 0.1).astype(np.float32)
    theirs = _sherpa_tokens(pair, samples)
    assert theirs  # 3 s at sherpa's default cap: up to 24 steps
    rec = Recognizer(pair, DecodeConfig(beam_size=1, max_len=len(theirs)), threads=1)
    symbols = TokenTable.read(pair / contract.TOKENS_FILE).symbols
    ours = rec.recognize_features([rec.features(samples * 32768)])[0].tokens  # ours takes int16-scale samples
    assert [symbols[i] for i in ours] == theirs


def test_cpu_benchmark_runs_end_to_end(tmp_path):
    root = tmp_path / "models"
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], capture_output=True, text=True, timeout=600)  # noqa: E731
    made = run(BENCHMARKS / "make_aed_l.py", root, *TINY_ARGS)
    assert made.returncode == 0, made.stderr[-3000:]
    report = json.loads((root / "make_aed_l.json").read_text())
    assert set(report["steps"]) == {"ckpt", "fp32", "fp32-v1", "int8", "int8-v1", "int4dec", "int4ffn", "int8-static"}
    assert report["steps"]["int4dec"]["stage"]["details"]["decoder"]["MatMulNBits"] > 0
    assert report["steps"]["int4ffn"]["stage"]["details"]["decoder"]["int8_nodes"]  # the recipe's mix
    assert all(r["max_rss_gib"] > r["baseline_rss_gib"] for r in report["steps"].values())

    out = tmp_path / "bench.json"
    bench = run(BENCHMARKS / "cpu_benchmark.py", root, "--steps", 2, "--repeats", 1, "--frames", 300, "--batches", 1, 2, "--batch-regimes", "3x2",
                "--profile", "always", "--json", out)  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    result = json.loads(out.read_text())
    variants = ["int8", "int4dec", "int4ffn", "int8-static"]
    assert list(result["systems"]) == ["official-eager", "ours-fp32", *(f"ours-{v}" for v in variants), "ours-int8-spinning",
                                       "ours-int8-stacked", *(f"sherpa-{v}" for v in variants), "sherpa-v1-int8"]  # fmt: skip
    assert "intra-op spinning on: set" in result["systems"]["ours-int8-spinning"]["runtime"]
    assert "decoder as published" in result["systems"]["ours-int8-stacked"]["runtime"]
    for name, t in result["systems"].items():
        assert t["steps"] == 2, name
        assert t["peak_rss_gib"] > 0 and t["memory"]["peak_rss"] == "VmHWM since the reset", name  # exact, no sampler in the clocks
        if "NOT MEASURED" in t["timed"]:
            continue  # a fitted slope or a difference of medians can come out <= 0 for a tiny model on a busy machine; then it says so
        assert t["encoder_ms"] > 0 and t["step_ms"] > 0, name
        assert t["rtf"] == pytest.approx(t["e2e_s"] / 3.0)
    assert {r["steps"] for r in result["systems"]["sherpa-v1-int8"]["raw"].values()} == {2, 5, 8}  # caps 1, 2, 3 per s over 298 frames
    measured = {name for name, t in result["systems"].items() if t["step_ms"] > 0}  # NaN: not measured
    assert ("e2e speedup int8 vs official eager" in result["ratios"]) == ({"official-eager", "ours-int8"} <= measured)  # none from a step not measured
    assert "encoder speedup int8 vs official eager" in result["ratios"] and "rtf ours-int8" in result["targets"]
    assert {o["op"] for o in result["profile_ours-int8"]["decoder"]["by_op"]} >= {"DynamicQuantizeMatMul"}
    assert {o["op"] for o in result["profile_ours-int4dec"]["decoder"]["by_op"]} >= {"MatMulNBits"}
    for v in variants:  # the beam grid and the batch sizes ran for every variant of ours
        t = result["systems"][f"ours-{v}"]
        regime = {f"batch {b}, beam 3, 2 steps" for b in (1, 2)}  # --batch-regimes 3x2
        assert set(t["step_ms_by"]) == {"beam 1, 2 steps", "beam 3, 2 steps"} and set(t["throughput"]) == {"batch 1", "batch 2", *regime}
        assert all(tp > 0 for tp in t["throughput"].values())
    assert "| ours-int8 |" in bench.stdout
