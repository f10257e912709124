"""The IOBinding path (optimize.runtime.binding) against the plain numpy path, on the CPU provider.

Thresholds: token sequences identical to the plain path; step logits bitwise equal (the
same graphs and kernels run on the same inputs); the Gather graph equal to numpy take.
The CUDA run of the same path needs a GPU and skips without one.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
from stage_helpers import cuda_starts
from typer.testing import CliRunner

from optimize.cli import app
from optimize.errors import OptimizeError
from optimize.runtime.binding import BoundInference, BoundPair
from optimize.runtime.inference import OrtInference
from optimize.runtime.recognizer import Recognizer, cross_attention_mask
from optimize.runtime.search import DecodeConfig
from optimize.runtime.providers import ProviderOptions
from optimize.runtime.session import OrtPair

pytest.importorskip("torch")
# pair, pair_v1, published_layout, varied_ckpt: the session fixtures of conftest.py

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
BOUND_CPU = ProviderOptions(io_binding=True)
FRAMES = (60, 23, 150)  # mixed lengths: batch 3 binds a cross_attn_mask


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(n, 80)).astype(np.float32) for n in FRAMES]


def _tokens(model_dir, feats, options=ProviderOptions(), **cfg) -> list[tuple[int, ...]]:
    rec = Recognizer(model_dir, DecodeConfig(**cfg), threads=1, options=options)
    return [h.tokens for h in rec.recognize_features(feats)]


def test_recognizer_picks_the_bound_path_only_when_asked(pair):
    assert Recognizer(pair, threads=1).bound is None
    assert isinstance(Recognizer(pair, threads=1, options=BOUND_CPU).bound, BoundPair)


# Greedy needs a mild EOS boost on this model for its stopping point to depend on the input.
SEARCHES = {"greedy": dict(beam_size=1, eos_penalty=0.95, max_len=12), "beam3": dict(beam_size=3, max_len=12)}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("layout", ["dynamic", "fixed"])
def test_bound_tokens_equal_plain(pair, pair_v1, feats, layout, search, batch):
    model_dir = pair if layout == "dynamic" else pair_v1
    cfg = {**SEARCHES[search], "batch_size": batch}
    plain = _tokens(model_dir, feats, **cfg)
    assert len(set(plain)) == len(feats)  # input-dependent, so equality below means something
    assert _tokens(model_dir, feats, BOUND_CPU, **cfg) == plain


@pytest.mark.parametrize("search", SEARCHES)
def test_bound_tokens_equal_plain_on_the_published_batch1_layout(published_layout, feats, search):
    """Decoder batch fixed at 1: beam rows run one by one, a reorder only permutes OrtValues."""
    plain = _tokens(published_layout, feats, **SEARCHES[search])
    assert len(set(plain)) == len(feats)
    assert _tokens(published_layout, feats, BOUND_CPU, **SEARCHES[search]) == plain


def test_bound_tokens_equal_plain_on_an_fp16_pair(pair, feats, tmp_path):
    """The fp16 stage keeps float32 I/O, so its pair runs the same bound path (the GPU benchmark's fp16 row)."""
    from optimize.stages import fp16

    fp16.run(pair, tmp_path / "fp16", fp16.Fp16Config())
    cfg = {**SEARCHES["beam3"], "batch_size": 3}
    plain = _tokens(tmp_path / "fp16", feats, **cfg)
    assert len(set(plain)) == len(feats)
    assert _tokens(tmp_path / "fp16", feats, BOUND_CPU, **cfg) == plain


@pytest.mark.parametrize("cache", ["dynamic", "fixed"])
def test_bound_step_logits_equal_plain_across_a_reorder(tiny_pair, tiny_pair_v1, cache):
    """Replicate 2 utterances x beam 2, step 3 times, reorder with a repeated parent, step again."""
    pair = OrtPair(tiny_pair if cache == "dynamic" else tiny_pair_v1, threads=1)
    bound = BoundPair(OrtPair(tiny_pair if cache == "dynamic" else tiny_pair_v1, threads=1, options=BOUND_CPU))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 40, 80)).astype(np.float32)
    x_len = np.array([40, 29])
    plain_k, plain_v = pair.encode(x, x_len)
    bound_k, bound_v = bound.encode(x, x_len)
    assert np.array_equal(bound_k.numpy(), plain_k) and np.array_equal(bound_v.numpy(), plain_v)
    mask = cross_attention_mask(x_len, plain_k.shape[2])
    cache_len = pair.fixed_cache_len or 8
    history = rng.integers(5, 60, size=(4, 4))

    def run(model, parents):
        model.start(2)
        out = [model.step(history[:, t], t) for t in range(3)]
        model.reorder(parents)
        return out + [model.step(history[:, 3], 3)]

    parents = np.array([1, 1, 2, 3])  # utterance 0 keeps beam 1 twice
    plain = run(OrtInference(pair, plain_k, plain_v, mask, cache_len), parents)
    bound_out = run(BoundInference(bound, bound_k, bound_v, mask, cache_len), parents)
    for step, (a, b) in enumerate(zip(plain, bound_out)):
        assert np.array_equal(a, b), f"step {step}: max |diff| {np.abs(a - b).max()}"
    unordered = run(BoundInference(bound, bound_k, bound_v, mask, cache_len), np.arange(4))
    assert np.abs(unordered[3][0] - bound_out[3][0]).max() > 1e-3 * np.abs(bound_out[3]).max()  # the reorder mattered


def test_step_feeds_the_previous_output_caches_back(tiny_pair):
    """No host round trip: step t+1 receives the very OrtValues step t returned."""
    pair = OrtPair(tiny_pair, threads=1, options=BOUND_CPU)
    bound = BoundPair(pair)
    cross_k, cross_v = bound.encode(np.zeros((1, 30, 80), np.float32), np.array([30]))
    seen, returned = [], []
    real_step = bound.decoder_step

    def spy(tokens, k, v, *rest):
        seen.append((k, v))
        out = real_step(tokens, k, v, *rest)
        returned.append(out[1:])
        return out

    bound.decoder_step = spy  # instance attribute only; the class is untouched
    model = BoundInference(bound, cross_k, cross_v, None, 6)
    model.start(1)
    for t in range(3):
        model.step(np.array([3]), t)
    assert all(isinstance(v, ort.OrtValue) for pair_ in seen for v in pair_)
    assert all(seen[t + 1][0] is returned[t][0] and seen[t + 1][1] is returned[t][1] for t in range(2))


@pytest.mark.parametrize("shape", [(2, 5, 7, 3, 4), (3, 4, 9, 8)], ids=["cache", "cross_kv"])
def test_gather_graph_equals_numpy_take(tiny_pair, shape):
    bound = BoundPair(OrtPair(tiny_pair, threads=1))
    k, v = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    rows = np.array([3, 0, 0, 2, 1])[: shape[1] + 1] % shape[1]
    k_rows, v_rows = bound.gather_rows(bound.to_device(k), bound.to_device(v), rows)
    assert np.array_equal(k_rows.numpy(), np.take(k, rows, axis=1)) and np.array_equal(v_rows.numpy(), np.take(v, rows, axis=1))


def test_zeros_graph(tiny_pair):
    bound = BoundPair(OrtPair(tiny_pair, threads=1))
    z = bound.zeros((2, 3, 4, 1, 5)).numpy()
    assert z.shape == (2, 3, 4, 1, 5) and z.dtype == np.float32 and not z.any()


def test_warmup_runs_and_leaves_results_unchanged(pair, feats):
    cfg = DecodeConfig(beam_size=3, max_len=12)
    rec = Recognizer(pair, cfg, threads=1, options=BOUND_CPU)
    before = [h.tokens for h in rec.recognize_features(feats)]
    rec.warmup(lengths=(50, 200), steps=2)
    assert [h.tokens for h in rec.recognize_features(feats)] == before
    with pytest.raises(OptimizeError, match="warm-up"):
        rec.warmup(lengths=(0,))


@pytest.mark.skipif(cuda_starts(), reason="the CUDA provider starts here; test_cuda_bound_logits_match_cpu covers it")
def test_cuda_without_a_working_cuda_ep_is_one_error_line(pair, tmp_path):
    """No CUDA EP (onnxruntime), or one that does not start (onnxruntime-gpu without its libraries or a GPU)."""
    with pytest.raises(OptimizeError) as e:
        Recognizer(pair, provider="cuda")
    assert "CUDAExecutionProvider" in e.value.message and "\n" not in str(e.value)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(8000, np.int16), 16000, subtype="PCM_16")
    result = CliRunner().invoke(app, ["transcribe", str(pair), str(wav), "--provider", "cuda"])
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CUDAExecutionProvider" in lines[0]


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_bound_logits_match_cpu(pair, feats):
    """The bound path on CUDA (TF32 off) against the plain CPU path: step logits within 1e-4 of the largest."""
    try:
        gpu = OrtPair(pair, provider="cuda")
    except OptimizeError as e:  # onnxruntime-gpu without a usable device or libraries: one clear line
        assert "CUDA" in e.message and "\n" not in str(e)
        pytest.skip(f"CUDA EP listed but unusable: {e.message}")
    cpu = OrtPair(pair, threads=1)
    bound = BoundPair(gpu)
    x, x_len = feats[2][None], np.array([len(feats[2])])
    models = [OrtInference(cpu, *cpu.encode(x, x_len), None, 9), BoundInference(bound, *bound.encode(x, x_len), None, 9)]
    tokens = np.random.default_rng(0).integers(5, 60, size=8)
    for model in models:
        model.start(3)
    for t, token in enumerate(tokens):
        want, got = (m.step(np.full(3, token), t) for m in models)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert _tokens(pair, feats, **SEARCHES["beam3"]) == [h.tokens for h in Recognizer(pair, DecodeConfig(**SEARCHES["beam3"]), "cuda").recognize_features(feats)]


def _benchmark_module(monkeypatch):
    """benchmarks/ is not a package: load the script as a module (registered, as dataclasses need)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_benchmark.py"
    spec = importlib.util.spec_from_file_location("gpu_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling aed_dims.py
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_on_cpu_at_tiny_dims(varied_ckpt, pair, tmp_path, capsys, monkeypatch):
    """The GPU benchmark's CPU run: every fp32 row timed, fp16 rows skipped with a note, ORT tokens = official's."""
    pytest.importorskip("fireredasr.models.fireredasr_aed")
    bench = _benchmark_module(monkeypatch)
    argv = ["--device", "cpu", "--ckpt", str(varied_ckpt), "--fp32-pair", str(pair), "--batches", "1", "3", "--frames", "300",
            "--steps", "6", "--warmup", "0", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads((tmp_path / "cpu-d64-L2x2.json").read_text())["rows"]
    by_name = {(r["implementation"], r["batch"]): r for r in rows}
    for name in ("torch fp32", "ort fp32 numpy I/O", "ort fp32 IOBinding"):
        for batch in (1, 3):
            row = by_name[name, batch]
            assert row["rtf"] > 0 and row["encoder_ms"] > 0 and row["decoder_ms_per_step"] > 0, row
            assert row["token_agreement"] == 1.0, row
    for name in ("torch fp16", "ort fp16 IOBinding"):
        assert by_name[name, 1]["rtf"] is None and by_name[name, 1]["note"].startswith("skipped")
    assert "| ort fp32 IOBinding | 3 |" in capsys.readouterr().out
    assert bench.main(["--device", "cpu", "--fp32-pair", str(pair), "--out", str(tmp_path)]) == 1  # a pair needs its checkpoint


def test_parity_probes_run_the_shipped_bound_path_with_the_same_numbers(pair):
    """evaluate/parity.py decodes through the one driver: the IOBinding path gives the numpy path's numbers."""
    from optimize.evaluate import parity

    probe = parity.synthetic_probes(1, frames=(150,))[0]
    p = OrtPair(pair, "cpu", 1, BOUND_CPU)
    plain = parity.run_probe(p, probe, 6, True)
    bound = parity.run_probe(p, probe, 6, True, BoundPair(p))
    assert len(plain.tokens) == 6 and p.info.eos not in plain.tokens  # SuppressEos: a fixed number of steps
    assert plain.tokens == bound.tokens and np.array_equal(plain.logits, bound.logits) and np.array_equal(plain.cross_k, bound.cross_k)
    result, _ = parity.compare(p, [probe], [plain], 6, True, BoundPair(p))
    assert result.teacher_forced_cosine > 0.999999 and result.greedy_identical == 1.0 and result.cross_kv_rel_error == 0.0
