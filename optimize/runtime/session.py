"""An encoder/decoder ONNX Runtime session pair, checked against the contract on load.

Shapes below use N = rows (utterances, or utterances x beams in the decoder),
T = fbank frames, T' = encoder frames after 4x subsampling, L = decoder layers,
D = model width (H x Dh), S = self-attention cache length, H x Dh = heads x head dim,
V = vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from optimize import contract
from optimize.errors import OptimizeError

_X, _X_LEN = (name for name, _ in contract.ENCODER_INPUTS)
_TOKENS, _K_CACHE, _V_CACHE, _CROSS_K, _CROSS_V, _OFFSET = (name for name, _ in contract.DECODER_INPUTS)
_ENC_OUTPUTS = [name for name, _ in contract.ENCODER_OUTPUTS]
_DEC_OUTPUTS = [name for name, _ in contract.DECODER_OUTPUTS]

# ORT reports I/O types as strings; contract.py uses onnx TensorProto element types.
_ELEM_TYPES = {"tensor(float)": 1, "tensor(int64)": 7, "tensor(float16)": 10, "tensor(int32)": 6}
# ORT's pybind exceptions derive from Exception directly, not RuntimeError.
_ORT_ERRORS = (
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

    def __post_init__(self):
        bad = {
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCHES,
            "arena_extend_strategy": self.arena_extend_strategy not in ARENA_EXTEND_STRATEGIES,
            "device_id": self.device_id < 0,
            "gpu_mem_limit": self.gpu_mem_limit < 0,
        }
        names = [name for name, is_bad in bad.items() if is_bad]
        if names:
            raise OptimizeError(
                f"invalid provider options {', '.join(f'{n}={getattr(self, n)!r}' for n in names)}",
                f"use cudnn_conv_algo_search in {CUDNN_CONV_ALGO_SEARCHES}, arena_extend_strategy in "
                f"{ARENA_EXTEND_STRATEGIES}, device_id >= 0, gpu_mem_limit >= 0",
            )

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


def _session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads  # 0 = ORT's default (one per physical core)
    # Errors only: ORT warns on every load that cross_attn_mask is an overridable initializer, by design.
    opts.log_severity_level = 3
    return opts


def providers(provider: str, options: ProviderOptions) -> list:
    """The `providers` list for ort.InferenceSession; OptimizeError when `provider` cannot run here."""
    if provider not in PROVIDERS:
        raise OptimizeError(f"unknown provider {provider!r}", f"use one of {', '.join(PROVIDERS)}")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise OptimizeError(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (has {', '.join(ort.get_available_providers())})",
            "install onnxruntime-gpu matching the CUDA version, or use --provider cpu",
        )
    # CPU stays listed for the few ops without a CUDA kernel (shape arithmetic on `offset`)
    return [("CUDAExecutionProvider", options.cuda()), "CPUExecutionProvider"]


def load_session(path: Path | str | bytes, provider: str, threads: int, options: ProviderOptions) -> ort.InferenceSession:
    """An InferenceSession on `provider` from a file or a serialized model; a CUDA EP that fails to initialise is an OptimizeError."""
    chosen = providers(provider, options)
    source, path = (path, "an in-memory graph") if isinstance(path, bytes) else (str(path), path)
    try:
        # enable_fallback=0: ORT would otherwise print "EP Error" and quietly rebuild the session,
        # or re-run a failed step, on the CPU; a CUDA run must fail loudly instead
        sess = ort.InferenceSession(source, _session_options(threads), providers=chosen, enable_fallback=0)
    except _ORT_ERRORS + (RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())
        if provider == "cuda" and "cuda" in reason.lower():
            raise OptimizeError(f"CUDAExecutionProvider failed for {path}: {reason}", _CUDA_FIX) from e
        if not isinstance(e, _ORT_ERRORS):
            raise  # not an ORT load failure: a bug, keep the traceback
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
    from optimize.runtime.binding import zeros_model  # binding imports this module at load time

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


def _io(args) -> list[tuple[str, int]]:
    return [(a.name, _ELEM_TYPES.get(a.type, -1)) for a in args]


class OrtPair:
    """encoder.onnx + decoder.onnx of one model directory, validated against optimize.contract."""

    def __init__(self, model_dir: str | Path, provider: str = "cpu", threads: int = 0, options: ProviderOptions = ProviderOptions()):
        enc_path, dec_path, _ = contract.model_paths(Path(model_dir))
        self.provider = provider
        self.threads = threads
        self.options = options
        self.encoder = load_session(enc_path, provider, threads, options)
        self.decoder = load_session(dec_path, provider, threads, options)
        contract.check_io(_io(self.encoder.get_inputs()), contract.ENCODER_INPUTS, "encoder inputs", str(enc_path))
        contract.check_io(_io(self.encoder.get_outputs()), contract.ENCODER_OUTPUTS, "encoder outputs", str(enc_path))
        contract.check_io(_io(self.decoder.get_inputs()), contract.DECODER_INPUTS, "decoder inputs", str(dec_path))
        contract.check_io(_io(self.decoder.get_outputs()), contract.DECODER_OUTPUTS, "decoder outputs", str(dec_path))
        self.info = self._model_info(str(enc_path))
        self._check_cache_dims(str(dec_path))
        overridable = {i.name for i in self.decoder.get_overridable_initializers()}
        required = {i.name for i in self.decoder.get_inputs()}
        self.has_cross_mask = contract.CROSS_MASK in overridable | required
        # The published v1 graphs fix the batch dim at 1 (int); ours leave it symbolic (str).
        self.max_encoder_rows = _fixed(self.encoder.get_inputs()[0].shape[0])
        self.max_decoder_rows = _fixed(self.decoder.get_inputs()[0].shape[0])

    @property
    def fixed_cache_len(self) -> int | None:
        """S when the decoder fixes the self-cache length (1024 in the published v1), else None."""
        return self.info.fixed_cache_len

    def _model_info(self, where: str) -> contract.ModelInfo:
        meta = self.encoder.get_modelmeta().custom_metadata_map
        fields = contract.parse_metadata(meta, where)
        vocab = _fixed(self.decoder.get_outputs()[0].shape[2])
        if "vocab_size" in meta:
            vocab = int(meta["vocab_size"])
        if vocab is None:
            raise OptimizeError(f"{where}: vocabulary size unknown (no vocab_size metadata, dynamic logits dim)", "re-export the pair")
        cache_len = _fixed(self.decoder.get_inputs()[1].shape[2])
        return contract.ModelInfo(**fields, vocab_size=vocab, fixed_cache_len=cache_len)

    def _check_cache_dims(self, where: str) -> None:
        info = self.info
        want = {0: info.num_decoder_layers, 3: info.num_head, 4: info.head_dim}
        shape = self.decoder.get_inputs()[1].shape
        bad = {axis: (shape[axis], n) for axis, n in want.items() if isinstance(shape[axis], int) and shape[axis] != n}
        if len(shape) != 5 or bad:
            raise OptimizeError(
                f"{where}: self-cache shape {shape} disagrees with the encoder metadata (L, N, S, H, Dh) = "
                f"({info.num_decoder_layers}, N, S, {info.num_head}, {info.head_dim})",
                "use an encoder and decoder exported together",
            )

    def encode(self, x: np.ndarray, x_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the encoder.

        x: shape = (N, T, 80), float32, CMVN-normalized fbank, zero-padded after x_len.
        x_len: shape = (N,), int64, valid frames per row.
        returns: (cross_k, cross_v), each shape = (L, N, T', D), float32.
        """
        cross_k, cross_v = self.encoder.run(_ENC_OUTPUTS, {_X: x, _X_LEN: x_len})
        return cross_k, cross_v

    def decoder_step(
        self,
        tokens: np.ndarray,
        k_cache: np.ndarray,
        v_cache: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        offset: int,
        cross_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step for N rows at position `offset` (shared by all rows).

        tokens: shape = (N, 1), int64, the previous token of each row.
        k_cache, v_cache: shape = (L, N, S, H, Dh), float32; positions < offset are filled.
        cross_k, cross_v: shape = (L, N, T', D), float32, from `encode`.
        cross_mask: shape = (N, 1, 1, T'), float32, 0 valid / -inf padded; only for pairs with has_cross_mask.
        returns: logits shape = (N, 1, V), float32, and the caches with position `offset` written.
        """
        if cross_mask is not None and not self.has_cross_mask:
            raise OptimizeError("this decoder has no cross_attn_mask input", "decode with batch_size 1")
        feed = decoder_feed(tokens, k_cache, v_cache, cross_k, cross_v, offset, cross_mask)
        logits, k_cache, v_cache = self.decoder.run(_DEC_OUTPUTS, feed)
        return logits, k_cache, v_cache

    def empty_cache(self, rows: int, length: int) -> np.ndarray:
        """Zero self-cache, shape = (L, rows, length, H, Dh), float32."""
        i = self.info
        return np.zeros((i.num_decoder_layers, rows, length, i.num_head, i.head_dim), dtype=np.float32)


def _fixed(dim) -> int | None:
    """A static ONNX dim as int, None for a symbolic/unknown one."""
    return dim if isinstance(dim, int) else None


def decoder_feed(tokens, k_cache, v_cache, cross_k, cross_v, offset: int, cross_mask=None) -> dict:
    """The decoder's inputs by contract name (numpy arrays or OrtValues); the mask only when given."""
    feed = {_TOKENS: tokens, _K_CACHE: k_cache, _V_CACHE: v_cache, _CROSS_K: cross_k, _CROSS_V: cross_v,
            _OFFSET: np.array([offset], dtype=np.int64)}  # fmt: skip
    if cross_mask is not None:
        feed[contract.CROSS_MASK] = cross_mask
    return feed
