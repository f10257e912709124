"""Recipes: YAML -> frozen dataclasses; every key and type checked, with suggestions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from optimize.errors import OptimizeError
from optimize.recipe import Recipe, load_recipe, to_dict
from optimize.runtime.providers import ProviderOptions
from optimize.stages.int8 import Int8Config

REPO = Path(__file__).resolve().parents[1]
GATES = {"max_error_rate_increase": 0.5, "min_token_agreement": 0.97, "min_speedup": 0.9}


def write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def base(**changes) -> dict:
    return {"model": "artifacts/firered-aed-tiny", "stages": ["simplify", "fuse", {"int8": {"per_channel": False}}], "gates": dict(GATES)} | changes


@pytest.mark.parametrize("name", ["cpu_int8", "gpu_fp16"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert recipe.name == name and recipe.output == Path("runs") / name
    assert [s.name for s in recipe.stages] == ["simplify", "fuse", "int8" if name == "cpu_int8" else "fp16"]
    assert recipe.model == REPO / "artifacts/firered-aed-tiny" and recipe.data == REPO / "calibration/eval"  # relative to the recipe
    assert recipe.provider == ("cpu" if name == "cpu_int8" else "cuda")
    assert to_dict(recipe)["stages"][0] == {"simplify": dataclasses.asdict(recipe.stages[0].config)}


@pytest.mark.parametrize("name, small", [("cpu_int8_aed_l", "cpu_int8"), ("gpu_fp16_aed_l", "gpu_fp16"), ("cpu_int8_int4dec_aed_l", "cpu_int8_int4dec")])
def test_aed_l_recipes_run_the_small_recipes_stages_by_parity(name, small):
    big, ref = load_recipe(REPO / "recipes" / f"{name}.yaml"), load_recipe(REPO / "recipes" / f"{small}.yaml")
    assert big.model == REPO / "work/aed_l/fp32" and big.data is None and big.evaluation.mode == "parity_only"
    assert big.provider == ref.provider and big.gates.min_logits_cosine >= 0.99
    assert [s.name for s in big.stages] == [s.name for s in ref.stages]
    assert big.stages[:2] == ref.stages[:2]  # simplify and fuse as in the small recipe


def test_defaults_and_typed_stage_config(tmp_path):
    recipe = load_recipe(write(tmp_path, base(), "my_recipe.yaml"))
    assert recipe.name == "my_recipe" and recipe.output == Path("runs/my_recipe")
    assert recipe.model == tmp_path / "artifacts/firered-aed-tiny" and recipe.provider == "cpu"  # relative to the recipe
    assert isinstance(recipe.stages[2].config, Int8Config) and recipe.stages[2].config.per_channel is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.threads = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "recipe, fragments",
    [
        (base(modle="x"), ["unknown key 'modle'", "did you mean 'model'?"]),
        (base(gates=GATES | {"min_speedupp": 1.0}), ["gates: unknown key 'min_speedupp'", "'min_speedup'"]),
        (base(stages=["simplfy"]), ["unknown stage 'simplfy'", "'simplify'"]),
        (base(stages=[{"int8": {"per_chanel": True}}]), ["stages[0].int8: unknown key 'per_chanel'", "'per_channel'"]),
        (base(decode={"beam": 3}), ["decode: unknown key 'beam'", "'beam_size'"]),
        (base(threads="two"), ["threads is 'two', expected int"]),
        (base(threads=True), ["threads is True, expected int"]),
        (base(stages=[{"int8": {"nodes_to_exclude": "a*"}}]), ["nodes_to_exclude is 'a*', expected a list"]),
        (base(gates={"min_speedup": 1.0}), ["gates lacks max_error_rate_increase, min_token_agreement"]),
        (base(gates=GATES | {"min_token_agreement": 97}), ["out of range"]),
        (base(data=None), ["data is empty but evaluation.mode is full"]),
        (base(provider="cuda"), ["stage int8 with provider cuda"]),
        (base(provider="tpu"), ["provider is 'tpu'"]),
        (base(evaluation={"mode": "fast"}), ["evaluation.mode is 'fast'"]),
        (base(decode={"beam_size": 0}), ["beam_size=0"]),
        (base(provider_options={"cudnn_algo_search": "HEURISTIC"}), ["provider_options: unknown key 'cudnn_algo_search'", "'cudnn_conv_algo_search'"]),
        (base(provider_options={"cudnn_conv_algo_search": "FAST"}), ["cudnn_conv_algo_search='FAST'", "HEURISTIC"]),
        (base(provider_options={"io_binding": "yes"}), ["provider_options.io_binding is 'yes', expected bool"]),
        ({"gates": GATES}, ["`stages` must be a list"]),
    ],
)
def test_invalid_recipes_say_what_and_how(tmp_path, recipe, fragments):
    with pytest.raises(OptimizeError) as e:
        load_recipe(write(tmp_path, recipe))
    for fragment in fragments:
        assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_provider_options_reach_the_recipe(tmp_path):
    recipe = load_recipe(write(tmp_path, base(provider_options={"io_binding": True, "device_id": 1, "gpu_mem_limit": 2**30})))
    assert recipe.provider_options == ProviderOptions(io_binding=True, device_id=1, gpu_mem_limit=2**30)
    assert recipe.provider_options.cuda()["gpu_mem_limit"] == str(2**30)
    assert load_recipe(write(tmp_path, base())).provider_options == ProviderOptions()
    gpu = load_recipe(REPO / "recipes" / "gpu_fp16.yaml").provider_options
    assert gpu.cudnn_conv_algo_search == "HEURISTIC" and gpu.use_tf32 is False


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(OptimizeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("stages: [simplify\n")
    with pytest.raises(OptimizeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_overrides_replace_and_revalidate(tmp_path):
    recipe = load_recipe(write(tmp_path, base(evaluation={"mode": "parity_only"})))
    changed = dataclasses.replace(recipe, model=Path("elsewhere"), data=None, output=Path("out"))
    assert changed.model == Path("elsewhere") and changed.data is None and changed.stages == recipe.stages
    full = load_recipe(write(tmp_path, base()))
    with pytest.raises(OptimizeError, match="data is empty"):
        dataclasses.replace(full, data=None)
    assert isinstance(full, Recipe)


def test_int4_decoder_recipe_splits_the_graphs():
    """cpu_int8_int4dec: 4-bit symmetric weights for the decoder's FFN, dynamic int8 for the rest."""
    recipe = load_recipe(REPO / "recipes" / "cpu_int8_int4dec.yaml")
    ref = load_recipe(REPO / "recipes" / "cpu_int8.yaml")
    assert [s.name for s in recipe.stages] == ["simplify", "fuse", "int4_weight_only", "int8"]
    assert recipe.stages[:2] == ref.stages[:2]
    assert (recipe.model, recipe.data) == (ref.model, ref.data)  # paths relative to the recipe file, as cpu_int8.yaml
    int4, int8 = recipe.stages[2].config, recipe.stages[3].config
    assert int4.graphs == ("decoder",) and int4.is_symmetric and int4.block_size == 32 and int4.accuracy_level == 4
    assert int4.excluded_as == "int8" and "/tgt_word_prj/*" in int4.nodes_to_exclude  # 4-bit FFN only (BENCHMARKS 9.1)
    assert int8.graphs == ("encoder",) and int8.reduce_range == "auto"
