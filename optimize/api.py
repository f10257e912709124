"""The pipeline's two entry points as plain functions: what `optimize run` and `optimize eval` call.

Keyword arguments left at None keep the recipe's (or the defaults') value, so the CLI and the
library share one set of defaults.
"""

from __future__ import annotations

from pathlib import Path

from optimize import pipeline
from optimize.errors import GateFailure
from optimize.overrides import replace_given as _replace
from optimize.evaluate.suite import EvalSettings, Progress, quiet
from optimize.recipe import Recipe, default, load_recipe


def run(
    recipe: str | Path | Recipe,
    model: str | Path | None = None,
    data: str | Path | None = None,
    output: str | Path | None = None,
    threads: int | None = None,
    provider: str | None = None,
    force: bool = False,
    by: tuple[str, ...] | None = None,
    log=lambda message: None,
    progress: Progress = quiet,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    isolate: bool = True,
) -> dict:
    """Run a recipe (a YAML path or a loaded Recipe); returns the report (report.json's content).

    Raises GateFailure when a stage fails a check or gate (nothing is published), OptimizeError
    for bad input. executor, workers, ray_address: where evaluations decode (local or ray);
    isolate=False runs stages and evaluations in this process.
    """
    cfg = recipe if isinstance(recipe, Recipe) else load_recipe(Path(recipe), model=None if model is None else Path(model))
    paths = {k: None if v is None else Path(v) for k, v in {"model": model, "data": data, "output": output}.items()}
    cfg = _replace(cfg, threads=threads, **paths)
    cfg = _replace(cfg, evaluation=_replace(cfg.evaluation, executor=executor, workers=workers))
    options = pipeline.Options(provider=provider, force=force, ray_address=ray_address, isolate=isolate)
    options = _replace(options, by=by)
    return pipeline.run(cfg, options, log=log, progress=progress)


def evaluate_pair(
    model_dir: str | Path,
    data: str | Path | None = None,
    recipe: str | Path | None = None,
    reference: str | Path | None = None,
    provider: str | None = None,
    threads: int | None = None,
    check: bool = True,
    by: tuple[str, ...] = (),
    progress: Progress = quiet,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> dict:
    """The pipeline's checks on one pair; settings from `recipe` or the defaults.

    data: eval manifest (default: the recipe's data). reference: an fp32 pair for parity, token
    agreement, deltas and the changed utterances. by: manifest fields to break error rates down by
    ("lang", "condition", ..., "length"). With check=True a failed check raises GateFailure; the result is
    returned either way otherwise (`result["metrics"]["failures"]`).
    """
    src = load_recipe(Path(recipe), model=Path(model_dir)) if recipe else None
    pick = lambda name: getattr(src, name) if src else default(name)  # noqa: E731
    evaluation = _replace(pick("evaluation"), executor=executor, workers=workers)
    settings = EvalSettings(pick("provider"), pick("threads"), pick("decode"), evaluation, pick("provider_options"))
    settings = _replace(settings, provider=provider, threads=threads)
    data_path = Path(data) if data is not None else pick("data")
    result = pipeline.evaluate_pair(Path(model_dir), data_path, settings, None if reference is None else Path(reference), progress=progress, ray_address=ray_address, by=tuple(by))
    failures = result["metrics"]["failures"]
    if check and failures:
        raise GateFailure(f"{model_dir} failed {failures[0]}", "see the checks in `optimize eval --help`")
    return result
