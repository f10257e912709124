"""Execution providers: their names, options, session creation and the CUDA start check.

The one place that knows ORT's provider strings, the CUDA EP's option mapping and
how a provider that cannot run here is reported. Everything that opens an
InferenceSession (the pair, the IOBinding helper graphs, the pipeline's start check)
comes through `load_session`.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from optimize import host
from optimize.errors import OptimizeError

# ORT's pybind exceptions derive from Exception directly, not RuntimeError.
ORT_ERRORS = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NoSuchFile,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
    _ort_state.EPFail,
)
PROVIDERS = ("cpu", "cuda")
_CUDA_FIX = "install the CUDA and cuDNN libraries onnxruntime-gpu was built for (its [cuda,cudnn] extras), or use --provider cpu"
CUDNN_CONV_ALGO_SEARCHES = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")
SPINNING = (True, False, "auto")
ARENA_EXTEND_STRATEGIES = ("kSameAsRequested", "kNextPowerOfTwo")


@dataclass(frozen=True)
class ProviderOptions:
    """How the pair runs on its provider; the CUDA fields reach the CUDA EP, `io_binding` the recognizer.

    CUDA graphs (`enable_cuda_graph`) are left out on purpose: they need fixed shapes and
    fixed device addresses, which a growing self-cache and variable T never give
    (ort-toolchain.md §6).
    """

    # CUDA device ordinal; the encoder outputs and the self-caches live on it between steps
    device_id: int = 0
    # cuDNN's default EXHAUSTIVE benchmarks every conv algorithm on each new input shape,
    # i.e. on every new T; sherpa-onnx found it "extremely slow" and uses HEURISTIC (session.cc)
    cudnn_conv_algo_search: str = "HEURISTIC"
    # TF32 matmuls on Ampere/Hopper change fp32 results; off so "fp32" means fp32, as torch's matmul default
    use_tf32: bool = False
    # bytes the CUDA arena may hold; 0 = no limit (ORT's default)
    gpu_mem_limit: int = 0
    # kSameAsRequested, as ORT's own CudaSession: power-of-two growth over-allocates on long inputs
    arena_extend_strategy: str = "kSameAsRequested"
    # keep cross K/V and the self-caches as OrtValues on the device (IOBinding) on the CPU provider
    # too; the CUDA provider always does (optimize.runtime.binding)
    io_binding: bool = False
    # let ORT's intra-op threads spin between ops instead of sleeping: True, False, or "auto" =
    # on only when every thread of the pool finds an idle core when the session is made
    # (spinning_choice). On the AED-L int8 pair spinning was 1.15x faster end to end with
    # nothing else running, 2.74x slower with other jobs on the cores (BENCHMARKS.md 9.3, 9.3.1)
    intra_op_spinning: bool | str = "auto"
    # numpy path: run the decoder rewritten in memory (the file is unchanged; runtime/decoder_graph.py):
    # each layer's cross K/V its own input (no per-step copy of the stacked (L, N, T', D) input), on
    # fused graphs one cross K/V row per utterance for all its beams, and only the step's new K/V
    # returned and written into the caches in place (no per-step copy of both whole caches)
    rewrite_decoder: bool = True

    def __post_init__(self):
        bad = {
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCHES,
            "arena_extend_strategy": self.arena_extend_strategy not in ARENA_EXTEND_STRATEGIES,
            "device_id": self.device_id < 0,
            "gpu_mem_limit": self.gpu_mem_limit < 0,
            "intra_op_spinning": self.intra_op_spinning not in SPINNING,
        }
        names = [name for name, is_bad in bad.items() if is_bad]
        if names:
            raise OptimizeError(
                f"invalid provider options {', '.join(f'{n}={getattr(self, n)!r}' for n in names)}",
                f"use cudnn_conv_algo_search in {CUDNN_CONV_ALGO_SEARCHES}, arena_extend_strategy in "
                f"{ARENA_EXTEND_STRATEGIES}, device_id >= 0, gpu_mem_limit >= 0, intra_op_spinning in {SPINNING}",
            )

    def resolved(self, threads: int) -> tuple[ProviderOptions, str]:
        """These options with intra_op_spinning decided for a pool of `threads` (0 = one per core), and why."""
        if self.intra_op_spinning != "auto":
            return self, f"{'on' if self.intra_op_spinning else 'off'}: set"
        cores = host.usable_cores()
        pool = threads or int(cores)
        spin, why = spinning_choice(pool, cores, host.sample_idle_cores() if pool > 1 else None)
        return replace(self, intra_op_spinning=spin), why

    def binds(self, provider: str) -> bool:
        """Whether the recognizer decodes through IOBinding on `provider`: always on CUDA, on the CPU when asked."""
        return provider == "cuda" or self.io_binding

    def cuda(self) -> dict[str, str]:
        """The CUDA EP's provider options, one visible mapping (ORT takes strings)."""
        opts = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "use_tf32": str(int(self.use_tf32)),
            "arena_extend_strategy": self.arena_extend_strategy,
        }
        if self.gpu_mem_limit:  # ORT's own default is SIZE_MAX; only a limit that was asked for is passed
            opts["gpu_mem_limit"] = str(self.gpu_mem_limit)
        return opts


def spinning_choice(pool: int, cores: float, idle: float | None) -> tuple[bool, str]:
    """(spin, why) for an intra-op pool of `pool` threads, given the usable cores and how many were idle.

    A spinning worker keeps its core between ops so the next op starts without a wake-up (the
    decoder step is ~900 small kernels at AED-L size); it only pays while no other process
    wants that core, and costs the most exactly when one does. So: on only when every thread
    of the pool finds an idle core. A quarter core of slack absorbs the host's daemons.
    """
    if pool <= 1:
        return False, "off: one intra-op thread, no pool to spin"
    if idle is None:
        return False, "off: the host's CPU load is unknown"
    spin = idle >= pool - 0.25
    return spin, f"{'on' if spin else 'off'}: {idle:.1f} of {cores:g} usable cores idle for {pool} intra-op threads"


MAX_THREADS = 1024  # far above any core count; a larger value is a typo


def check_threads(threads: int) -> None:
    """Refuse a thread count ORT would reject (negative) or that cannot be meant."""
    if not 0 <= threads <= MAX_THREADS:
        raise OptimizeError(f"threads is {threads}", f"use 0 (ORT's choice: one per physical core) or a count from 1 to {MAX_THREADS}")


def _session_options(threads: int, spinning: bool, profile: str | None = None) -> ort.SessionOptions:
    check_threads(threads)
    opts = ort.SessionOptions()
    if profile:  # ORT's per-kernel trace, written as <profile>_<date>.json by end_profiling()
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads  # 0 = ORT's default (one per physical core)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Errors only: ORT warns on every load that cross_attn_mask is an overridable initializer, by design.
    opts.log_severity_level = 3
    return opts


def providers(provider: str, options: ProviderOptions) -> list:
    """The `providers` list for ort.InferenceSession; OptimizeError when `provider` cannot run here."""
    if provider not in PROVIDERS:
        raise OptimizeError(f"unknown provider {provider!r}", f"use one of {', '.join(PROVIDERS)}")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if not cuda_available():
        raise OptimizeError(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (has {', '.join(ort.get_available_providers())})",
            "install onnxruntime-gpu matching the CUDA version, or use --provider cpu",
        )
    # CPU stays listed for the few ops without a CUDA kernel (shape arithmetic on `offset`)
    return [("CUDAExecutionProvider", options.cuda()), "CPUExecutionProvider"]


def cuda_available() -> bool:
    """Whether this onnxruntime lists the CUDA EP (onnxruntime-gpu lists it whether or not it can start)."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def load_session(path: Path | str | bytes, provider: str, threads: int, options: ProviderOptions, profile: str | None = None) -> ort.InferenceSession:
    """An InferenceSession on `provider` from a file or a serialized model; a CUDA EP that fails to initialise is an OptimizeError.

    `profile`: a path prefix; the session then records ORT's profile (benchmarks' per-op breakdowns).
    """
    chosen = providers(provider, options)
    options, _ = options.resolved(threads)
    source, path = (path, "an in-memory graph") if isinstance(path, bytes) else (str(path), path)
    try:
        # enable_fallback=0: ORT would otherwise print "EP Error" and quietly rebuild the session,
        # or re-run a failed step, on the CPU; a CUDA run must fail loudly instead
        sess = ort.InferenceSession(source, _session_options(threads, options.intra_op_spinning, profile), providers=chosen, enable_fallback=0)
    except ORT_ERRORS + (RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())
        if provider == "cuda" and "cuda" in reason.lower():
            raise OptimizeError(f"CUDAExecutionProvider failed for {path}: {reason}", _CUDA_FIX) from e
        if not isinstance(e, ORT_ERRORS):
            raise  # not an ORT load failure: a bug, keep the traceback
        missing = re.search(r'External data path does not exist: "([^"]+)"', reason)
        if missing:
            raise OptimizeError(f"{path} keeps its weights in {Path(missing[1]).name}, which is missing", f"copy the .data file(s) next to {Path(str(path)).name}, as exported") from e
        raise OptimizeError(f"onnxruntime cannot load {path}: {reason}", "re-export the pair with `optimize export`") from e
    if provider == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        problem = _cuda_library_problem()
        reason = f"its library does not load: {problem}" if problem else f"device {options.device_id} or its driver is not usable"
        raise OptimizeError(f"CUDAExecutionProvider of onnxruntime {ort.__version__} did not start for {path}: {reason}", _CUDA_FIX)
    return sess


def check_cuda(options: ProviderOptions) -> None:
    """Start the CUDA EP once on a one-node graph; OptimizeError when it cannot run here.

    onnxruntime-gpu lists CUDAExecutionProvider whether or not its CUDA/cuDNN libraries
    and a device are present; only a session shows whether it starts.
    """
    from optimize.runtime.helper_graphs import zeros_model

    load_session(zeros_model().SerializeToString(), "cuda", 1, options)


def _cuda_library_problem() -> str | None:
    """Why onnxruntime-gpu's CUDA provider library does not load (a missing CUDA/cuDNN library, usually), or None.

    ORT only logs this reason, which the CLI silences; loading the library ourselves tells it.
    """
    import ctypes

    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.is_file():
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        return " ".join(str(e).split())
    return None


def check_provider(provider: str, options: ProviderOptions) -> None:
    """Fail before any work when `provider` cannot run here: unknown, no CUDA EP, or one that does not start."""
    providers(provider, options)
    if provider == "cuda":
        check_cuda(options)
