"""Where decoding runs: in this process (`local`) or on a Ray cluster (`ray`).

Both executors take the same work, batches of utterances formed by the caller, and
return the same hypotheses: a batch is decoded whole by one Recognizer built with the
same pair and settings, so its padding and results do not depend on where it ran.

The Ray executor starts `workers` actors (Ray's actor API; BENCHMARKS.md section 8 measures
why not Ray Data's `map_batches`). Each actor loads the pair once from
a path every node can read, then decodes shards: runs of batches grouped so that every
shard holds about the same audio duration. The driver hands a worker its next shard
when one comes back, so fast and slow nodes even out. A worker process that dies is
restarted by Ray and its pending shard retried (`max_restarts`, `max_task_retries`);
a shard that fails twice fails the run naming the utterance.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np

from optimize.errors import OptimizeError
from optimize.evaluate import rtf
from optimize.runtime.search import DecodeConfig
from optimize.runtime.providers import ProviderOptions

EXECUTORS = ("local", "ray")
ADDRESS_ENV = "RAY_ADDRESS"  # what `ray.init()` itself reads when no address is given
RAY_EXTRA = 'pip install -e ".[ray]"'
CONNECT_TIMEOUT_S = 5.0  # ray.init() on an unreachable address retries for minutes; we probe first
SHARD_AUDIO_S = 300.0  # at most this much audio per shard: bounds what one task ships and redoes on retry
SHARDS_PER_WORKER = 4  # at least this many shards per worker, so uneven nodes even out
ATTEMPTS = 2  # a shard that fails this many times fails the run
RAY_TIMED = "each ray worker's own wall and CPU clocks over its batches, summed (per worker, not the run's wall clock)"
# A local cluster started for one run: no dashboard, a small object store (shards are a
# few MB of features or a list of paths), its logs kept out of the terminal.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20

Progress = Callable[[str, int], ContextManager]


class ExecutorError(OptimizeError):
    """The executor could not finish the work (cluster unreachable, a worker cannot load the pair,
    a shard failed twice): a fact about where it ran, so no result of the pair is recorded."""


@dataclass(frozen=True)
class Decoder:
    """What every worker builds: the same Recognizer a local run builds."""

    model_dir: Path  # the pair; workers read it from this path
    decode: DecodeConfig  # search settings
    provider: str  # execution provider
    threads: int  # ORT intra-op threads per worker; a ray worker reserves max(threads, 1) CPUs
    options: ProviderOptions = ProviderOptions()  # CUDA options, io_binding

    def recognizer(self):
        from optimize.runtime.recognizer import Recognizer

        return Recognizer(self.model_dir, self.decode, self.provider, self.threads, self.options)


@dataclass(frozen=True)
class Work:
    """Batches to decode, in order. An item is features, shape = (T, 80), float32 (CMVN-normalized),
    or an audio path the worker reads."""

    batches: tuple[tuple, ...]  # items per batch, decoded together
    names: tuple[tuple[str, ...], ...]  # a name per item (audio path), for errors
    seconds: tuple[float, ...]  # audio seconds per batch (for paths: from the file headers)


@dataclass(frozen=True)
class Decoded:
    hyps: list  # per batch, a Hypothesis per item
    rtf: rtf.Rtf  # the timed pass; on ray, the workers' clocks summed (labelled in `timed`)
    io_binding: bool  # whether decoding ran through IOBinding
    throughput: dict  # executor, workers, shards, audio and wall seconds of the whole call


def decode(decoder: Decoder, work: Work, warmup: int, timed: str, executor: str = "local",
           workers: int = 0, address: str | None = None, progress: Progress | None = None) -> Decoded:  # fmt: skip
    """Decode `work` on `executor`; `warmup` untimed batches (per worker on ray) precede timing."""
    if executor not in EXECUTORS:
        raise OptimizeError(f"executor {executor!r} is not known", f"use one of {', '.join(EXECUTORS)}")
    if executor == "local":
        return _decode_local(decoder, work, warmup, timed, progress)
    return _decode_ray(decoder, work, warmup, timed, workers, address, progress)


def _decode_local(decoder: Decoder, work: Work, warmup: int, timed: str, progress: Progress | None) -> Decoded:
    start = time.perf_counter()
    recognizer = decoder.recognizer()
    picks = [work.batches[i] for i in spread(len(work.batches), warmup)]
    run = lambda batch: recognizer.recognize_features(_features(recognizer, batch))  # noqa: E731
    with (progress or quiet)(f"decode {Path(decoder.model_dir).name}", len(work.batches)) as bar:
        hyps, timing = rtf.measure(run, work.batches, work.seconds, picks, timed, bar.update)
    return Decoded(hyps, timing, recognizer.bound is not None, _throughput("local", 1, 1, work, start))


def transcribe_work(paths: Sequence[str | Path], batch_size: int) -> tuple[Work, list[int]]:
    """Audio files as work: sorted by duration (read from each header) into batches of `batch_size`,
    as `Recognizer.transcribe` batches them. Returns the work and the input index of each item, in work order."""
    import soundfile

    seconds = []
    for p in paths:
        try:
            seconds.append(soundfile.info(str(p)).duration)
        except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError) on unreadable audio
            raise OptimizeError(f"cannot read audio file {p}: {' '.join(str(e).split())[:200]}", "check the path and the format (wav, flac, ogg)") from e
    order = sorted(range(len(paths)), key=lambda i: seconds[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    work = Work(
        tuple(tuple(str(Path(paths[i]).resolve()) for i in b) for b in batches),
        tuple(tuple(str(paths[i]) for i in b) for b in batches),
        tuple(sum(seconds[i] for i in b) for b in batches),
    )
    return work, order


def transcribe(decoder: Decoder, paths: Sequence[str | Path], workers: int = 0, address: str | None = None, progress: Progress | None = None) -> list:
    """Hypotheses for audio files on the ray executor, in input order (the local path is `Recognizer.transcribe`)."""
    work, order = transcribe_work(paths, decoder.decode.batch_size)
    out = decode(decoder, work, 0, RAY_TIMED, "ray", workers, address, progress)
    hyps: list = [None] * len(paths)
    for i, h in zip(order, (h for batch in out.hyps for h in batch)):
        hyps[i] = h
    return hyps


def _features(recognizer, batch: Sequence) -> list[np.ndarray]:
    """Features of a batch: as given, or computed from audio paths as `Recognizer.transcribe` does."""
    from optimize.runtime.audio import load_audio

    return [item if isinstance(item, np.ndarray) else recognizer.features(load_audio(item)) for item in batch]


def _throughput(executor: str, workers: int, shards: int, work: Work, start: float) -> dict:
    wall = time.perf_counter() - start
    audio = float(sum(work.seconds))
    return {"executor": executor, "workers": workers, "shards": shards, "audio_seconds": audio, "wall_seconds": wall,
            "audio_seconds_per_wall_second": audio / max(wall, 1e-9)}  # fmt: skip


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included (fewer if n < k)."""
    if n == 0 or k == 0:
        return []
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def shards(seconds: Sequence[float], count: int) -> list[list[int]]:
    """Batch indices split into `count` shards of about equal audio duration.

    Longest batch first onto the shard with the least audio so far (LPT), so no shard
    exceeds the mean by more than one batch. Each shard lists its batches in order.
    """
    count = max(1, min(count, len(seconds)))
    heap = [(0.0, s) for s in range(count)]
    out: list[list[int]] = [[] for _ in range(count)]
    for b in sorted(range(len(seconds)), key=lambda i: (-seconds[i], i)):
        total, s = heapq.heappop(heap)
        out[s].append(b)
        heapq.heappush(heap, (total + seconds[b], s))
    return [sorted(s) for s in out if s]


def shard_count(seconds: Sequence[float], workers: int) -> int:
    """Enough shards for every worker to take several, none over SHARD_AUDIO_S of audio."""
    return max(SHARDS_PER_WORKER * workers, math.ceil(sum(seconds) / SHARD_AUDIO_S))


# ---- ray -------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ExecutorError("executor ray needs Ray, which is not installed", f"install the ray extra: {RAY_EXTRA}") from e
    return ray


def _probe(address: str) -> None:
    """Fail in one line when `host:port` does not accept a connection ("auto" and "local" are Ray's own)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"ray address {address!r} is not host:port", "pass --ray-address HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ExecutorError(
            f"ray cluster at {address} is unreachable: {e.strerror or e}",
            f"start it with `ray start --head` there, check host and port, or drop --ray-address/{ADDRESS_ENV} to use a local cluster",
        ) from e


@contextlib.contextmanager
def cluster(executor: str, workers: int, threads: int, address: str | None) -> Iterator[str | None]:
    """Join or start the cluster once for several decodes (a run's stages); yields the address to pass on.

    Spawned evaluation children join the yielded address instead of starting a cluster each.
    Yields `address` unchanged for the local executor.
    """
    if executor != "ray":
        yield address
        return
    ray, initialized = connect(address, workers * max(threads, 1) or None)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        if initialized:
            ray.shutdown()


def connect(address: str | None, cpus: int | None) -> tuple[object, bool]:
    """Join the cluster at `address` (else $RAY_ADDRESS), or start a local one with `cpus` CPUs.

    Returns the ray module and whether this call initialized Ray (then the caller shuts it down:
    that stops a cluster it started, or leaves one it joined).
    """
    ray = _import_ray()
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        _probe(address)
    if ray.is_initialized():  # this process already joined a cluster (a run's, or the caller's own)
        return ray, False
    no_logs = dict(log_to_driver=False, configure_logging=False, logging_level="error")
    if address:
        try:
            ray.init(address=address, **no_logs)
        except ConnectionError as e:
            raise ExecutorError(f"cannot join the ray cluster at {address}: {' '.join(str(e).split())[:300]}",
                                f"start one with `ray start --head`, or drop --ray-address/{ADDRESS_ENV} to use a local cluster") from e  # fmt: skip
        return ray, True
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **no_logs)
    return ray, True


class _Worker:
    """One Ray actor: loads the pair once, then decodes shards. Errors come back as OptimizeError."""

    def __init__(self, decoder: Decoder, warmup: int, timed: str):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        self.node = socket.gethostname()
        self.warmup, self.timed, self.error = warmup, timed, None
        try:
            self.recognizer = decoder.recognizer()
        except OptimizeError as e:  # kept, not raised: a raising constructor would be restarted in a loop
            self.error = (e.message, e.fix)

    def ready(self) -> tuple[str, tuple[str, str] | None]:
        """(this node's name, the pair's load error or None)."""
        return self.node, self.error

    def decode(self, batches: list, names: list, seconds: list) -> dict:
        """Decode a shard; returns hyps per batch, per-batch seconds and this process's CPU seconds."""
        recognizer = self.recognizer
        for i in spread(len(batches), self.warmup):  # untimed, first shard only
            recognizer.recognize_features(_features(recognizer, batches[i]))
        self.warmup = 0
        hyps, spent, cpu = [], [], time.process_time()
        for batch, batch_names in zip(batches, names):
            start = time.perf_counter()
            try:
                hyps.append(recognizer.recognize_features(_features(recognizer, batch)))
            except Exception as e:  # noqa: BLE001 - any failure is reported with the utterance named
                reason = e.message if isinstance(e, OptimizeError) else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                raise OptimizeError(f"utterance {', '.join(batch_names)} on {self.node}: {reason}", "fix or drop that utterance") from None
            spent.append(time.perf_counter() - start)
        return {"hyps": hyps, "spent": spent, "cpu": time.process_time() - cpu, "node": self.node, "io_binding": recognizer.bound is not None}


def _start_workers(ray, decoder: Decoder, count: int, cpus_each: int, warmup: int, timed: str) -> list:
    """`count` actors holding the pair; fails in one line when a worker cannot load it."""
    actor = ray.remote(_Worker).options(num_cpus=cpus_each, max_restarts=2, max_task_retries=2)
    actors = [actor.remote(decoder, warmup, timed) for _ in range(count)]
    try:
        ready = ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayError as e:  # e.g. a node without this package: the actor cannot be built
        reason = " ".join(str(e).split())[:300]
        raise ExecutorError(f"a ray worker failed to start: {reason}", f"install the same optimize and ray==2.60.0 on every node ({RAY_EXTRA})") from None
    for node, error in ready:
        if error is not None:
            raise ExecutorError(
                f"ray worker on {node} cannot load the pair at {decoder.model_dir}: {error[0]}",
                "put the pair on storage every node mounts at the same path (e.g. NFS), then pass that path",
            )
    return actors


def _decode_ray(decoder: Decoder, work: Work, warmup: int, timed: str, workers: int, address: str | None, progress: Progress | None) -> Decoded:
    start = time.perf_counter()
    cpus_each = max(decoder.threads, 1)
    decoder = Decoder(Path(decoder.model_dir).resolve(), decoder.decode, decoder.provider, decoder.threads, decoder.options)
    ray, initialized = connect(address, workers * cpus_each or None)
    actors: list = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = workers or max(1, cpus // cpus_each)
        if count * cpus_each > cpus:  # the actors would wait for CPUs that never come
            raise ExecutorError(f"{count} ray worker(s) of {cpus_each} CPU(s) each need {count * cpus_each} CPUs; the cluster has {cpus}",
                                "pass fewer --workers (or --threads), or add nodes")  # fmt: skip
        actors = _start_workers(ray, decoder, count, cpus_each, warmup, timed)
        plan = shards(work.seconds, shard_count(work.seconds, count))
        results = _run_shards(ray, actors, work, plan, progress or quiet, Path(decoder.model_dir).name)
    finally:
        for a in actors:
            ray.kill(a)
        if initialized:
            ray.shutdown()
    hyps: list = [None] * len(work.batches)
    spent: list = [0.0] * len(work.batches)
    for shard, out in zip(plan, results):
        for b, h, s in zip(shard, out["hyps"], out["spent"]):
            hyps[b], spent[b] = h, s
    label = f"{timed} ({count} ray workers)"  # the caller's words say what the clock covers (EvalSettings.timed)
    timing = rtf.summarize(spent, work.seconds, sum(r["cpu"] for r in results), count * warmup, label)
    nodes = sorted({r["node"] for r in results})
    return Decoded(hyps, timing, all(r["io_binding"] for r in results), _throughput("ray", count, len(plan), work, start) | {"nodes": nodes})


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def quiet(desc: str, total: int) -> ContextManager:
    """A progress bar that shows nothing (the Progress default here and in evaluate/suite.py)."""
    return _NoBar()


def _run_shards(ray, actors: list, work: Work, plan: list[list[int]], progress: Progress, name: str) -> list[dict]:
    """Hand each free worker the next shard (two in flight per worker); retry a failed shard once elsewhere."""
    pending = list(range(len(plan)))
    failures: dict[int, int] = {}
    results: list[dict | None] = [None] * len(plan)
    running: dict = {}  # ObjectRef -> (shard, actor)
    load = {i: 0 for i in range(len(actors))}
    total_audio, done_audio, start = sum(work.seconds), 0.0, time.perf_counter()

    def submit() -> None:
        while pending and min(load.values()) < 2:
            s, w = pending.pop(0), min(load, key=load.get)
            shard = plan[s]
            ref = actors[w].decode.remote([work.batches[b] for b in shard], [work.names[b] for b in shard], [work.seconds[b] for b in shard])
            running[ref] = (s, w)
            load[w] += 1

    with progress(f"ray {name}: {len(plan)} shards on {len(actors)} workers", len(plan)) as bar:
        submit()
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            s, w = running.pop(ref)
            load[w] -= 1
            try:
                results[s] = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
                failures[s] = failures.get(s, 0) + 1
                if failures[s] >= ATTEMPTS:
                    raise _shard_error(e, s, plan[s], work) from None
                if isinstance(e, ray.exceptions.RayActorError):
                    load.pop(w)  # Ray gave up restarting it
                    if not load:
                        raise ExecutorError(f"every ray worker died; last error: {' '.join(str(e).split())[:300]}", "check the workers' memory and logs (ray logs)") from None
                pending.insert(0, s)
            else:
                done_audio += sum(work.seconds[b] for b in plan[s])
                bar.update(1)
                _postfix(bar, done_audio, total_audio, time.perf_counter() - start)
            submit()
    return results  # type: ignore[return-value]


def _postfix(bar, done: float, total: float, elapsed: float) -> None:
    """Audio hours done and an ETA from the audio rate so far, after the shard count the bar shows."""
    eta = (total - done) * elapsed / max(done, 1e-9)
    set_postfix = getattr(bar, "set_postfix_str", None)
    if set_postfix is not None:
        set_postfix(f"{done / 3600:.3f}/{total / 3600:.3f} audio h, ETA {eta:.0f} s")


def _shard_error(e: Exception, s: int, shard: list[int], work: Work) -> ExecutorError:
    cause = getattr(e, "cause", None)
    if isinstance(cause, OptimizeError):
        return ExecutorError(f"shard {s} failed {ATTEMPTS} times: {cause.message}", cause.fix)
    first = ", ".join(work.names[shard[0]])
    return ExecutorError(f"shard {s} (from utterance {first}) failed {ATTEMPTS} times: {' '.join(str(e).split())[:300]}",
                         "check the workers' memory and logs (ray logs)")  # fmt: skip
