"""reexport: published-style pairs (made by the official modules, not our exporter) -> our pair.

Thresholds: the lifted weights equal the checkpoint's bit for bit (fp32 input) or to fp16
rounding (fp16 input); the re-exported pair's cross K/V within 1e-4 relative error and its
teacher-forced logits at cosine >= 0.99999 of the published pair's (the stage's own proof,
re-checked here with the shared probe helper).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fireredasr.models.fireredasr_aed")

import published_style  # noqa: E402
from stage_helpers import assert_one_line_failure, cli, copy_pair, probe_parity, refused, tiny_recipe  # noqa: E402

from optimize import contract, graph  # noqa: E402
from optimize.export.lift import lift  # noqa: E402
from optimize.stages import reexport  # noqa: E402


@pytest.fixture(scope="module")
def published(tiny_ckpt, tmp_path_factory):
    """Published-style pairs of the tiny checkpoint: v1 (opset 13, fixed 1024), v2 (.weights), v2 with .data, v2 fp16, v1 int8."""
    root = tmp_path_factory.mktemp("published")
    pairs = {
        "v1": published_style.make_published(tiny_ckpt, root / "v1", "v1"),
        "v2": published_style.make_published(tiny_ckpt, root / "v2", "v2"),
        "v2-data": published_style.make_published(tiny_ckpt, root / "v2-data", "v2", ".data"),
    }
    pairs["v2-fp16"] = published_style.to_fp16(pairs["v2"], root / "v2-fp16")
    pairs["v1-int8"] = published_style.to_int8(pairs["v1"], root / "v1-int8")  # encoder.int8.onnx, decoder.int8.onnx
    pairs["v1-siblings"] = published_style.to_fp16(pairs["v1"], published_style.to_int8(pairs["v1"], root / "v1-siblings"), ".fp16")
    return pairs


@pytest.fixture(scope="module")
def reexported(published, tmp_path_factory):
    """The reexport stage's output for v1, v2 and the fp16 input (each run once)."""
    root = tmp_path_factory.mktemp("reexported")
    return {name: (reexport.run(published[name], root / name, reexport.Config()), root / name) for name in ("v1", "v2", "v2-fp16")}


def test_fixture_is_published_style(published):
    enc = onnx.load(str(published["v1"] / "encoder.onnx"), load_external_data=False)
    dec = onnx.load(str(published["v1"] / "decoder.onnx"), load_external_data=False)
    assert enc.opset_import[0].version == 13 and dec.graph.input[1].type.tensor_type.shape.dim[2].dim_value == 1024
    assert [d.dim_value for d in enc.graph.input[0].type.tensor_type.shape.dim][::2] == [1, 80]  # (1, T, 80)
    assert "/decoder/layer_stack.0/self_attn/w_qs/MatMul" in {n.name for n in dec.graph.node}
    assert any(i.name.startswith("onnx::MatMul_") for i in dec.graph.initializer)
    v2 = onnx.load(str(published["v2"] / "encoder.onnx"), load_external_data=False)
    assert v2.opset_import[0].version == 17 and (published["v2"] / "encoder.weights").is_file()
    assert dict(graph.metadata(v2))["version"] == "2" and dict(graph.metadata(enc))["maintainer"] == "k2-fsa"
    assert reexport.needed(published["v2"]) and graph.quantized_ops(onnx.load(str(published["v1-int8"] / "decoder.int8.onnx")))


@pytest.mark.parametrize("style", ["v1", "v2", "v2-data", "v2-fp16"])
def test_lift_recovers_the_checkpoint(tiny_ckpt, published, style):
    state = torch.load(tiny_ckpt / "model.pth.tar", map_location="cpu", weights_only=False)["model_state_dict"]
    lifted = lift(published[style])
    assert set(lifted.state) == set(state)
    rtol = 2.0**-11 if style.endswith("fp16") else 0.0  # fp16 rounds to 11 significant bits
    for key, want in state.items():
        want = want.float().numpy()
        assert np.all(np.abs(lifted.state[key] - want) <= rtol * np.abs(want) + 1e-7), key


@pytest.mark.parametrize("style", ["v1", "v2", "v2-fp16"])
def test_reexport_equals_published_and_keeps_the_contract(published, reexported, style):
    out, dst = reexported[style]
    proof = out.details["proof"]
    limit = (1e-2, 0.999) if style.endswith("fp16") else (1e-4, 0.99999)
    assert proof["cross_kv_rel_error"] <= limit[0] and proof["teacher_forced_cosine"] >= limit[1], proof
    parity = probe_parity(published[style], dst)
    assert parity.cross_kv_rel_error <= limit[0] and parity.teacher_forced_cosine >= limit[1], parity
    src_enc = graph.load(published[style] / contract.ENCODER_FILE, load_external=False)
    enc = graph.load(dst / contract.ENCODER_FILE, load_external=False)
    assert graph.metadata(enc) == graph.metadata(src_enc)  # byte for byte, version 1 or 2 as published
    assert (dst / contract.TOKENS_FILE).read_bytes() == (published[style] / contract.TOKENS_FILE).read_bytes()
    dec = graph.load(dst / contract.DECODER_FILE, load_external=False)
    assert contract.CROSS_MASK in graph.overridable_initializers(dec)
    cache_dims = dec.graph.input[1].type.tensor_type.shape.dim
    assert cache_dims[1].dim_param and cache_dims[2].dim_param  # batch and cache length dynamic


def test_reexported_pair_batches_with_padding(reexported):
    """Batch of 3 padded utterances decodes as each one alone (the published pair has batch 1)."""
    from optimize.runtime.recognizer import Recognizer
    from optimize.runtime.search import DecodeConfig

    _, dst = reexported["v2"]
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((n, 80)).astype(np.float32) for n in (210, 97, 160)]
    alone = Recognizer(dst, DecodeConfig(beam_size=1, batch_size=1, max_len=6)).recognize_features(feats)
    batched = Recognizer(dst, DecodeConfig(beam_size=1, batch_size=3, max_len=6)).recognize_features(feats)
    assert [h.tokens for h in batched] == [h.tokens for h in alone]


def test_pipeline_puts_reexport_first_and_judges_against_the_published_input(published, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", published["v2"], ["simplify"], tmp_path / "run",
                         gates={"max_error_rate_increase": 0.5, "min_token_agreement": 0.5, "min_speedup": 0.01, "min_logits_cosine": 0.9999})  # fmt: skip
    result = cli("run", recipe)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "stage reexport runs first" in result.stderr
    assert (tmp_path / "run" / "1-reexport").is_dir() and (tmp_path / "run" / "2-simplify").is_dir()
    final = tmp_path / "run" / "final"
    assert dict(graph.metadata(graph.load(final / contract.ENCODER_FILE, load_external=False)))["version"] == "2"
    parity = probe_parity(published["v2"], final)
    assert parity.teacher_forced_cosine >= 0.99999, parity


def test_quantizing_recipe_refuses_a_published_int8_pair(published, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", published["v1-int8"], ["int8"], tmp_path / "run")
    assert_one_line_failure(cli("run", recipe), "already quantized", "MatMulInteger", "stage int8", "fp32 or fp16 files")
    assert not (tmp_path / "run").exists()


def test_eval_and_transcribe_run_a_published_int8_pair_as_it_is(published, tmp_path):
    audio = sorted((Path(__file__).resolve().parents[1] / "calibration" / "eval" / "audio").iterdir())[0]
    result = cli("transcribe", published["v1-int8"], audio)
    assert result.exit_code == 0 and result.stdout.startswith(str(audio)), (result.stdout, result.stderr)
    recipe = tiny_recipe(tmp_path / "r.yaml", published["v1-int8"], [], tmp_path / "run")
    result = cli("eval", published["v1-int8"], "--recipe", recipe)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "RTF" in result.stdout and "MatMulInteger" in result.stdout


def test_published_file_names_are_taken_as_they_are(published, tmp_path):
    """sherpa-onnx's names: a lone encoder.int8.onnx pair is the model; of siblings, the encoder file picks one."""
    assert [p.name for p in contract.model_paths(published["v1-int8"])] == ["encoder.int8.onnx", "decoder.int8.onnx", "tokens.txt"]
    siblings = published["v1-siblings"]
    fp16 = contract.model_paths(siblings / "encoder.fp16.onnx")
    assert [p.name for p in fp16] == ["encoder.fp16.onnx", "decoder.fp16.onnx", "tokens.txt"]
    recipe = tiny_recipe(tmp_path / "r.yaml", siblings, ["int8"], tmp_path / "run")
    assert_one_line_failure(cli("run", recipe), "holds several pairs", "encoder.fp16.onnx", "encoder.int8.onnx", f"{siblings}/encoder.fp16.onnx")
    result = cli("run", recipe, "--model", siblings / "encoder.int8.onnx")
    assert_one_line_failure(result, "already quantized", "MatMulInteger", "fp32 or fp16 files")
    assert not (tmp_path / "run").exists()
    lone = copy_pair(siblings, tmp_path / "lone")
    (lone / "decoder.fp16.onnx").unlink()  # encoder.fp16.onnx without its decoder: not a pair
    assert [p.name for p in contract.model_paths(lone)][:2] == ["encoder.int8.onnx", "decoder.int8.onnx"]
    assert_one_line_failure(cli("eval", lone / "encoder.fp16.onnx", "--recipe", recipe), "lacks decoder.fp16.onnx")


def test_pipeline_takes_a_published_variant_by_its_encoder_file(published, tmp_path):
    """--model DIR/encoder.fp16.onnx: the baseline stores it as encoder.onnx/decoder.onnx, reexport follows."""
    recipe = tiny_recipe(tmp_path / "r.yaml", published["v1-siblings"] / "encoder.fp16.onnx", [], tmp_path / "run",
                         gates={"max_error_rate_increase": 0.5, "min_token_agreement": 0.5, "min_speedup": 0.01, "min_logits_cosine": 0.999})  # fmt: skip
    result = cli("run", recipe)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    baseline = tmp_path / "run" / "0-baseline"
    names = {p.name for p in baseline.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "tokens.txt"} <= names and not names & {"encoder.fp16.onnx", "encoder.int8.onnx"}, names
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.load(baseline / "encoder.onnx").graph.initializer)
    assert (tmp_path / "run" / "1-reexport").is_dir() and (tmp_path / "run" / "final" / "encoder.onnx").is_file()


def test_graph_without_module_paths_is_refused(published, tmp_path):
    src = copy_pair(published["v1"], tmp_path / "anonymous")
    for fname in (contract.ENCODER_FILE, contract.DECODER_FILE):
        model = onnx.load(str(src / fname))
        for i, node in enumerate(model.graph.node):
            node.name = f"node_{i}"
        for i, init in enumerate(model.graph.initializer):  # and weights named by nothing
            old = init.name
            init.name = f"w_{i}"
            for node in model.graph.node:
                node.input[:] = [init.name if n == old else n for n in node.input]
        onnx.save(model, str(src / fname))
    error = refused(lambda s, d: reexport.run(s, d, reexport.Config()), src, tmp_path / "out", "no module paths")
    assert "\n" not in str(error) and "optimize export" in str(error)


def test_mismatched_tokens_are_refused(published, tmp_path):
    src = copy_pair(published["v2"], tmp_path / "bad-tokens")
    lines = (src / contract.TOKENS_FILE).read_text(encoding="utf-8").splitlines()
    (src / contract.TOKENS_FILE).write_text("".join(line + "\n" for line in lines[:-5]), encoding="utf-8")
    error = refused(lambda s, d: reexport.run(s, d, reexport.Config()), src, tmp_path / "out", "tokens.txt has 55 symbols, the decoder's vocabulary is 60")
    assert "\n" not in str(error)
    recipe = tiny_recipe(tmp_path / "r.yaml", src, ["int8"], tmp_path / "run")  # through `optimize run`: before anything is written
    assert_one_line_failure(cli("run", recipe), f"{src / 'tokens.txt'} has 55 symbols, the decoder's vocabulary is 60", "tokens.txt that came with")
    assert not (tmp_path / "run").exists()


def test_without_torch_the_stage_names_the_export_extra(published, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    error = refused(lambda s, d: reexport.run(s, d, reexport.Config()), published["v2"], tmp_path / "out", "stage reexport needs torch")
    assert "[export]" in str(error) and "\n" not in str(error)
