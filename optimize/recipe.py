"""Recipes: YAML files validated into frozen dataclasses.

A recipe names the input pair, the eval data, the provider, the decoding, the ordered
stages with their parameters, the gates and the output directory. Every key is
checked: an unknown one is an error naming it with the closest valid key, and a value
of the wrong type is an error, never ignored. Defaults live only in the dataclasses
below (and in each stage's Config); the CLI overrides with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from optimize.errors import OptimizeError
from optimize.runtime.search import DecodeConfig
from optimize.runtime.providers import PROVIDERS, ProviderOptions, check_threads
from optimize.stages import STAGES, config_class

RUNS_DIR = Path("runs")  # a recipe without `output` writes to runs/<name>
EVAL_MODES = ("full", "parity_only")


@dataclass(frozen=True)
class Gates:
    """Checked after every stage against the fp32 baseline; a miss stops the run."""

    max_error_rate_increase: float  # absolute error-rate points a stage may add over the baseline
    min_token_agreement: float  # fraction of utterances whose tokens must equal the baseline's
    min_speedup: float  # baseline RTF / stage RTF; judged only where the RTF is representative
    # min cosine of teacher-forced decoder logits vs the baseline, worst step of any probe
    # (0 = not gated); the accuracy gate of evaluation.mode parity_only
    min_logits_cosine: float = 0.0

    def __post_init__(self):
        if self.max_error_rate_increase < 0 or not 0 <= self.min_token_agreement <= 1 or self.min_speedup <= 0 or not 0 <= self.min_logits_cosine <= 1:
            raise OptimizeError(
                f"gates {dataclasses.asdict(self)} are out of range",
                "use max_error_rate_increase >= 0, 0 <= min_token_agreement <= 1, min_speedup > 0, 0 <= min_logits_cosine <= 1",
            )


@dataclass(frozen=True)
class EvaluationConfig:
    """How each stage's pair is measured."""

    # "full": error rates on the eval set; "parity_only": teacher-forced logits and
    # forced-length greedy decoding on probes, for random-weight models (no error rate)
    mode: str = "full"
    probes: int = 4  # utterances (or, without data, synthetic inputs) for the parity checks
    probe_steps: int = 32  # decoder steps of the parity greedy run (eos suppressed in parity_only)
    warmup: int = 2  # untimed decodes before timing, spread over the length range (shortest and longest first)
    smoke_frames: tuple[int, ...] = (83, 517)  # the two input lengths of the load-and-run check
    # where the eval set is decoded: "local" (this process) or "ray" (a Ray cluster, the
    # `ray` extra; --ray-address or $RAY_ADDRESS joins one, else a local one is started)
    executor: str = "local"
    workers: int = 0  # ray: decoding actors of `threads` CPUs each (0 = as many as the cluster's CPUs hold)

    def __post_init__(self):
        from optimize.runtime.executor import EXECUTORS

        if self.mode not in EVAL_MODES:
            raise OptimizeError(f"evaluation.mode is {self.mode!r}", f"use one of {', '.join(EVAL_MODES)}")
        if self.executor not in EXECUTORS:
            raise OptimizeError(f"evaluation.executor is {self.executor!r}", f"use one of {', '.join(EXECUTORS)}")
        if self.workers < 0 or (self.workers and self.executor == "local"):
            raise OptimizeError(f"evaluation.workers is {self.workers} with executor {self.executor}", "use workers >= 0, and only with executor: ray")
        if self.executor == "ray" and self.mode == "parity_only":
            raise OptimizeError("evaluation.executor ray with mode parity_only: parity runs a few probes, nothing to shard", "use executor: local with parity_only")
        if self.probes < 1 or self.probe_steps < 1 or self.warmup < 0 or len(self.smoke_frames) != 2 or min(self.smoke_frames) < 8:
            raise OptimizeError(
                f"evaluation {dataclasses.asdict(self)} is out of range",
                "use probes >= 1, probe_steps >= 1, warmup >= 0 and two smoke_frames >= 8",
            )


@dataclass(frozen=True)
class Stage:
    name: str  # the recipe word, a key of optimize.stages.STAGES
    config: object  # that stage's frozen Config


@dataclass(frozen=True)
class Recipe:
    name: str  # the recipe's name (default: the file stem)
    output: Path  # run directory (default: runs/<name>)
    stages: tuple[Stage, ...]  # in order, after the implicit fp32 baseline
    gates: Gates
    model: Path  # input pair: encoder.onnx, decoder.onnx, tokens.txt (required: never a silent default model)
    data: Path | None = Path("calibration/eval")  # eval manifest; None only with evaluation.mode parity_only
    provider: str = "cpu"  # the execution provider the recipe targets and times
    threads: int = 1  # ORT intra-op threads, fixed so RTF compares stage to stage (0 = ORT's choice)
    # CUDA EP options (device_id, cudnn_conv_algo_search, use_tf32, gpu_mem_limit, arena_extend_strategy)
    # and io_binding for the CPU provider; every evaluation's sessions get them
    provider_options: ProviderOptions = field(default_factory=ProviderOptions)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # search settings (beam_size 1 = greedy, as sherpa-onnx)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise OptimizeError(f"provider is {self.provider!r}", f"use one of {', '.join(PROVIDERS)}")
        check_threads(self.threads)
        if self.data is None and self.evaluation.mode == "full":
            raise OptimizeError("data is empty but evaluation.mode is full", "name an eval manifest, or set evaluation.mode: parity_only")
        if self.provider == "cuda" and any(s.name == "int8" for s in self.stages):
            raise OptimizeError(
                "stage int8 with provider cuda: dynamic-int8 graphs run on the CPU EP path",
                "use an fp16 stage for cuda, or provider: cpu for int8",
            )


def default(name: str) -> object:
    """The default of a Recipe field, for commands that run without a recipe (`optimize eval`)."""
    f = next(f for f in dataclasses.fields(Recipe) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(valid)}"


def _coerce(value: object, hint: object, where: str) -> object:
    """Check `value` against a type hint; YAML lists become tuples, strings Paths."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, where)
            except OptimizeError:
                continue
        raise OptimizeError(f"{where} is {value!r}, expected {_type_name(hint)}", "fix the recipe value")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise OptimizeError(f"{where} is {value!r}, expected a list", "write it as a YAML list, e.g. [a, b]")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, str) and value != "",
    }.get(hint)  # type: ignore[call-overload]
    if ok is None and dataclasses.is_dataclass(hint):
        return build(hint, value, where)  # type: ignore[arg-type]
    if not ok:
        raise OptimizeError(f"{where} is {value!r}, expected {_type_name(hint)}", "fix the recipe value")
    return float(value) if hint is float else Path(value) if hint is Path else value  # type: ignore[arg-type]


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("pathlib.", "").replace("NoneType", "null")


def build(cls: type, mapping: object, where: str, given: dict | None = None) -> object:
    """Instantiate frozen dataclass `cls` from a YAML mapping, checking every key and type.

    `given` holds fields already built by the caller (the recipe's stages).
    """
    given = given or {}
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise OptimizeError(f"{where} is {mapping!r}, expected a mapping of keys", "write `key: value` lines under it")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]
    for key in mapping:
        if key not in names:
            raise OptimizeError(f"{where or 'recipe'}: unknown key {key!r}", _suggest(str(key), names))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in mapping.items()} | given
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        keys = ", ".join(f"`{m}:`" for m in missing) or "them"
        raise OptimizeError(f"{where or 'recipe'} lacks {', '.join(missing) or 'keys'}", f"add {keys} to the recipe" + (" (or pass --model)" if "model" in missing else "")) from e


def _stage(item: object, where: str) -> Stage:
    """`- simplify` or `- int8: {per_channel: false}` -> Stage."""
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, params = next(iter(item.items()))
    else:
        raise OptimizeError(f"{where} is {item!r}", "write each stage as `- name` or `- name: {param: value}`")
    if name not in STAGES:
        raise OptimizeError(f"{where}: unknown stage {name!r}", _suggest(str(name), STAGES))
    return Stage(name, build(config_class(name), params, f"{where}.{name}"))


PATH_KEYS = ("model", "data", "output")  # recipe keys holding paths


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise OptimizeError(
                    f"recipe key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    "keep one of them: YAML would silently use the last",
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: Path, model: Path | None = None) -> Recipe:
    """Read and validate a recipe file; `model` (the CLI's --model) stands in for the recipe's `model:`."""
    path = Path(path)
    if path.is_dir():
        raise OptimizeError(f"recipe {path} is a directory", "pass a recipe file such as recipes/cpu_int8.yaml")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except OSError as e:
        raise OptimizeError(f"cannot read recipe {path}: {e.strerror}", "pass a recipe file such as recipes/cpu_int8.yaml") from e
    except UnicodeDecodeError as e:
        raise OptimizeError(f"recipe {path} is not UTF-8 (byte {e.start}: {e.object[e.start:e.start + 4]!r})", "re-save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise OptimizeError(f"recipe {path} is not valid YAML: {' '.join(str(e).split())}", "fix the YAML syntax") from e
    if not isinstance(raw, dict):
        raise OptimizeError(f"recipe {path} is not a mapping", "start the file with keys such as `model:` and `stages:`")
    raw = dict(raw)
    for key in PATH_KEYS:  # relative to the recipe file, so a recipe runs from any directory
        if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
            raw[key] = os.path.normpath(path.parent / raw[key])
    stages = raw.pop("stages", None)
    if not isinstance(stages, list):
        raise OptimizeError(f"recipe {path}: `stages` must be a list", "list stages such as `- simplify`")
    if model is not None:
        raw["model"] = str(model)
    raw.setdefault("name", path.stem)
    raw.setdefault("output", str(RUNS_DIR / str(raw["name"])))
    built = tuple(_stage(s, f"stages[{i}]") for i, s in enumerate(stages))
    return build(Recipe, raw, "", given={"stages": built})  # type: ignore[return-value]


def to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (saved next to the run's outputs)."""
    out = dataclasses.asdict(recipe)
    out["stages"] = [{s.name: dataclasses.asdict(s.config)} for s in recipe.stages]  # type: ignore[call-overload]
    return out
