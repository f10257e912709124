"""An encoder/decoder ONNX Runtime session pair, checked against the contract on load.

Shapes below use N = rows (utterances, or utterances x beams in the decoder),
T = fbank frames, T' = encoder frames after 4x subsampling, L = decoder layers,
D = model width (H x Dh), S = self-attention cache length, H x Dh = heads x head dim,
V = vocabulary size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from optimize import contract, graph
from optimize.errors import OptimizeError
from optimize.runtime.decoder_graph import DecoderLayout, layer_input, rewrite_decoder
from optimize.runtime.providers import ProviderOptions, load_session

_X, _X_LEN = (name for name, _ in contract.ENCODER_INPUTS)
_TOKENS, _K_CACHE, _V_CACHE, _CROSS_K, _CROSS_V, _OFFSET = (name for name, _ in contract.DECODER_INPUTS)
_ENC_OUTPUTS = [name for name, _ in contract.ENCODER_OUTPUTS]
_DEC_OUTPUTS = [name for name, _ in contract.DECODER_OUTPUTS]

# ORT reports I/O types as strings; contract.py uses onnx TensorProto element types.
_ELEM_TYPES = {"tensor(float)": 1, "tensor(int64)": 7, "tensor(float16)": 10, "tensor(int32)": 6}

def _io(args) -> list[tuple[str, int]]:
    return [(a.name, _ELEM_TYPES.get(a.type, -1)) for a in args]


class OrtPair:
    """encoder.onnx + decoder.onnx of one model directory, validated against optimize.contract."""

    def __init__(self, model_dir: str | Path, provider: str = "cpu", threads: int = 0, options: ProviderOptions = ProviderOptions(),
                 profile: str | Path | None = None):  # fmt: skip
        """`profile`: a path prefix; both sessions then record ORT's profile (<profile>_encoder_*.json, <profile>_decoder_*.json)."""
        enc_path, dec_path, _ = contract.model_paths(Path(model_dir))
        self.provider = provider
        self.threads = threads
        # spinning decided once for both sessions (and BoundPair's helpers), from the host's load now
        self.options, self.spinning = options.resolved(threads)
        options = self.options
        # the decoder's graph is read (and rewritten) before any weights are resident; then the encoder's session
        # loads first, as it always did (ORT's load of an fp16 encoder peaks higher with the decoder resident)
        with tempfile.TemporaryDirectory(prefix="optimize-decoder-", ignore_cleanup_errors=True) as scratch:
            dec_source, self.layout = _decoder_source(dec_path, provider, options, Path(scratch))
            self.encoder = load_session(enc_path, provider, threads, options, profile and f"{profile}_encoder")
            self.decoder = load_session(dec_source, provider, threads, options, profile and f"{profile}_decoder")
        contract.check_io(_io(self.encoder.get_inputs()), contract.ENCODER_INPUTS, "encoder inputs", str(enc_path))
        contract.check_io(_io(self.encoder.get_outputs()), contract.ENCODER_OUTPUTS, "encoder outputs", str(enc_path))
        contract.check_io(_io(self.decoder.get_inputs()), contract.DECODER_INPUTS, "decoder inputs", str(dec_path))
        contract.check_io(_io(self.decoder.get_outputs()), contract.DECODER_OUTPUTS, "decoder outputs", str(dec_path))
        self.info = self._model_info(str(enc_path))
        self._check_cache_dims(str(dec_path))
        overridable = {i.name for i in self.decoder.get_overridable_initializers()}
        required = {i.name for i in self.decoder.get_inputs()}
        self.has_cross_mask = contract.CROSS_MASK in overridable | required
        # FireRedASR2 pairs exported with --with-ctc: the CTC log-probs, for token timestamps
        self.has_ctc = contract.CTC_OUTPUT[0] in {o.name for o in self.encoder.get_outputs()}
        # The published v1 graphs fix the batch dim at 1 (int); ours leave it symbolic (str).
        self.max_encoder_rows = _fixed(self.encoder.get_inputs()[0].shape[0])
        self.max_decoder_rows = _fixed(self.decoder.get_inputs()[0].shape[0])

    @property
    def cross_per_utterance(self) -> bool:
        """Whether decoder_step takes cross K/V (and mask) with one row per utterance, shared by its beams."""
        return self.layout is not None and self.layout.per_utterance

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
        bad = {k: fields[k] for k in ("sos", "eos") if not 0 <= fields[k] < vocab}  # type: ignore[operator]
        if bad:
            raise OptimizeError(f"{where}: metadata {', '.join(f'{k}={v}' for k, v in bad.items())} lies outside the vocabulary of {vocab} tokens", "re-export the pair: sos/eos must be token ids of this model")
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

    def encode_with_ctc(self, x: np.ndarray, x_len: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`encode` plus the CTC log-probs, shape = (N, T', V), float32 (pairs with has_ctc)."""
        cross_k, cross_v, ctc = self.encoder.run(_ENC_OUTPUTS + [contract.CTC_OUTPUT[0]], {_X: x, _X_LEN: x_len})
        return cross_k, cross_v, ctc

    def decoder_step(
        self,
        tokens: np.ndarray,
        k_cache: np.ndarray,
        v_cache: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        offset: int,
        cross_mask: np.ndarray | None = None,
        cross_feed: dict | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step for N rows at position `offset` (shared by all rows).

        tokens: shape = (N, 1), int64, the previous token of each row.
        k_cache, v_cache: shape = (L, N, S, H, Dh), float32; positions < offset are filled.
        cross_k, cross_v: shape = (L, N, T', D), float32, from `encode`; (L, U, T', D) with U
        utterances of N / U rows each (row u x N / U + b) when cross_per_utterance.
        cross_mask: shape = (N or U, 1, 1, T'), float32, 0 valid / -inf padded; only for pairs with has_cross_mask.
        cross_feed: cross_inputs(cross_k, cross_v), made once per encoding by the caller, else here.
        returns: logits shape = (N, 1, V), float32, and the caches with position `offset` written:
        new arrays, or, when the rewritten decoder appends (layout.appends_kv), k_cache and
        v_cache themselves, written in place.
        """
        if cross_mask is not None and not self.has_cross_mask:
            raise OptimizeError("this decoder has no cross_attn_mask input", "decode with batch_size 1")
        feed = decoder_feed(tokens, k_cache, v_cache, cross_k, cross_v, offset, cross_mask)
        if self.layout is None:
            logits, k_cache, v_cache = self.decoder.run(_DEC_OUTPUTS, feed)
            return logits, k_cache, v_cache
        feed |= cross_feed if cross_feed is not None else self.cross_inputs(cross_k, cross_v)
        logits, k_new, v_new = self.decoder.run(_DEC_OUTPUTS, feed)
        if not self.layout.appends_kv:
            return logits, k_new, v_new
        k_cache[:, :, offset] = k_new[:, :, 0]
        v_cache[:, :, offset] = v_new[:, :, 0]
        return logits, k_cache, v_cache

    def cross_inputs(self, cross_k: np.ndarray, cross_v: np.ndarray) -> dict[str, np.ndarray]:
        """The rewritten decoder's per-layer cross K/V inputs; {} for a decoder run as published.

        cross_k, cross_v: shape = (L, U, T', D), float32. Each input is layer i as a view, or
        when the layout is heads-first, a (U, H, T', Dh) copy (once per encoding, not per step).
        """
        if self.layout is None:
            return {}
        feed = {}
        for name, stacked in ((_CROSS_K, cross_k), (_CROSS_V, cross_v)):
            if h := self.layout.heads_first:
                l, u, t, d = stacked.shape
                stacked = np.ascontiguousarray(stacked.reshape(l, u, t, h, d // h).transpose(0, 1, 3, 2, 4))
            feed |= {layer_input(name, i): stacked[i] for i in range(self.layout.layers)}
        return feed

    def empty_cache(self, rows: int, length: int) -> np.ndarray:
        """Zero self-cache, shape = (L, rows, length, H, Dh), float32."""
        i = self.info
        return np.zeros((i.num_decoder_layers, rows, length, i.num_head, i.head_dim), dtype=np.float32)


def _decoder_source(path: Path, provider: str, options: ProviderOptions, scratch: Path) -> tuple[Path, DecoderLayout | None]:
    """(file for the decoder's session, DecoderLayout or None): `path` itself, or the graph as
    decoder_graph.rewrite_decoder rewrites it, written into `scratch` with its weights beside it.

    Only on the numpy path (the IOBinding path feeds device OrtValues, which cannot be sliced
    per layer) and for decoders that keep their weights in the .onnx file (one with external
    data would first have to be read whole into memory). The weights are written tensor by
    tensor and the session reads the file: no serialized copy of the whole model next to the
    proto and the session's own (from bytes, an AED-L fp32 pair peaked 2.9 GB higher and stayed
    2.3 GB higher than from its file).
    """
    if not options.rewrite_decoder or options.binds(provider):
        return path, None
    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    layout = None if external else rewrite_decoder(model)
    source = path
    if layout is not None:
        try:
            source = scratch / "decoder.onnx"
            onnx.save_model(model, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="decoder.weights", size_threshold=graph.EXTERNAL_SIZE_THRESHOLD)  # fmt: skip
        except OSError:  # no room for the copy: the decoder as published is slower, not wrong
            source, layout = path, None
    del model
    graph.release_memory()
    return source, layout


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
