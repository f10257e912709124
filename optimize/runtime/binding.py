"""IOBinding inference: the encoder's cross K/V and the self-caches stay on the device for a whole batch.

What the plain path (optimize.runtime.inference.OrtInference) copies through host
numpy arrays on every step, this path keeps as OrtValues on the provider's device:
- the encoder's cross K/V are bound to device memory once per batch;
- each decoder step binds the previous step's output caches as its input caches;
- only the logits are bound to host memory, for the search;
- per-beam replication and beam reordering run a one-node Gather graph on the same device.
sherpa-onnx does the same in C++ on CUDA (PR #3011: RTF 0.152 -> 0.083 on an RTX 4090,
published-onnx-contract.md §4). The CPU provider runs the identical code with device
"cpu", which is how it is tested without a GPU.

Shapes use the names of optimize.runtime.session: N rows, T' encoder frames, L layers,
D = H x Dh, S the self-cache length, V the vocabulary.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from optimize import contract
from optimize.errors import OptimizeError
from optimize.runtime.helper_graphs import gather_rows_model, zeros_model
from optimize.runtime.providers import load_session
from optimize.runtime.session import OrtPair, decoder_feed

_X, _X_LEN = (name for name, _ in contract.ENCODER_INPUTS)
_LOGITS, _OUT_K, _OUT_V = (name for name, _ in contract.DECODER_OUTPUTS)
_ENC_OUTPUTS = tuple(name for name, _ in contract.ENCODER_OUTPUTS)
class BoundPair:
    """An OrtPair driven through IOBinding on its provider's device: cuda:<device_id>, or the CPU."""

    def __init__(self, pair: OrtPair):
        self.pair = pair
        self.device = ("cuda", pair.options.device_id) if pair.provider == "cuda" else ("cpu", 0)
        self._gather = self._helper(gather_rows_model())
        self._zeros = self._helper(zeros_model())

    def _helper(self, model: onnx.ModelProto) -> ort.InferenceSession:
        """A helper graph on the pair's provider and device, so its outputs land where the caches are.

        One thread, so no pool of its own: a second intra-op pool spins after each gather and
        took the cores from the decoder's (tiny dims, batch 16, beam 3, 2 threads: search
        324-340 ms with the pair's thread count, 268-270 ms with one; numpy path 254-283 ms).
        """
        return load_session(model.SerializeToString(), self.pair.provider, 1, self.pair.options)

    def _run(self, sess: ort.InferenceSession, inputs: dict, host_outputs: tuple[str, ...] = (), device_outputs: tuple[str, ...] = ()) -> list[ort.OrtValue]:
        """One run with numpy inputs copied in, OrtValue inputs bound in place; outputs host first, then device.

        A fresh binding per run: a reused one would hand ORT last run's output buffers,
        which are this run's input caches.
        """
        binding = sess.io_binding()
        for name, value in inputs.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in host_outputs:
            binding.bind_output(name, "cpu")
        for name in device_outputs:
            binding.bind_output(name, *self.device)
        # run_with_iobinding synchronizes the EP before returning (ORT's default run option)
        sess.run_with_iobinding(binding)
        return binding.get_outputs()

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        """A host array as an OrtValue on the device (on the CPU it shares the array's memory)."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), *self.device)

    def encode(self, x: np.ndarray, x_len: np.ndarray) -> tuple[ort.OrtValue, ort.OrtValue]:
        """x: shape = (N, T, 80), float32; x_len: shape = (N,), int64.

        returns: (cross_k, cross_v) on the device, each shape = (L, N, T', D), float32.
        """
        cross_k, cross_v = self._run(self.pair.encoder, {_X: x, _X_LEN: x_len}, device_outputs=_ENC_OUTPUTS)
        return cross_k, cross_v

    def encode_with_ctc(self, x: np.ndarray, x_len: np.ndarray) -> tuple[ort.OrtValue, ort.OrtValue, np.ndarray]:
        """`encode` plus the CTC log-probs on the host, shape = (N, T', V), float32 (pairs with has_ctc)."""
        ctc, cross_k, cross_v = self._run(self.pair.encoder, {_X: x, _X_LEN: x_len}, host_outputs=(contract.CTC_OUTPUT[0],), device_outputs=_ENC_OUTPUTS)
        return cross_k, cross_v, ctc.numpy()

    def gather_rows(self, k: ort.OrtValue, v: ort.OrtValue, rows: np.ndarray | list[int]) -> tuple[ort.OrtValue, ort.OrtValue]:
        """(k[:, rows], v[:, rows]) on the device; k, v shape = (d0, N, ...), float32; rows shape = (R,), int64."""
        feed = {"k": k, "v": v, "rows": np.asarray(rows, dtype=np.int64)}
        k_rows, v_rows = self._run(self._gather, feed, device_outputs=("k_rows", "v_rows"))
        return k_rows, v_rows

    def zeros(self, shape: tuple[int, ...]) -> ort.OrtValue:
        """float32 zeros of `shape`, made on the device (no host buffer of that size)."""
        (out,) = self._run(self._zeros, {"shape": np.array(shape, dtype=np.int64)}, device_outputs=("zeros",))
        return out

    def decoder_step(
        self,
        tokens: np.ndarray,
        k_cache: ort.OrtValue,
        v_cache: ort.OrtValue,
        cross_k: ort.OrtValue,
        cross_v: ort.OrtValue,
        offset: int,
        cross_mask: ort.OrtValue | None = None,
    ) -> tuple[np.ndarray, ort.OrtValue, ort.OrtValue]:
        """One decoder step; the same contract as OrtPair.decoder_step with the tensors on the device.

        tokens: shape = (N, 1), int64, on the host.
        k_cache, v_cache: shape = (L, N, S, H, Dh), float32; cross_k, cross_v: shape = (L, N, T', D), float32.
        cross_mask: shape = (N, 1, 1, T'), float32, 0 valid / -inf padded, or None.
        returns: logits shape = (N, 1, V), float32, on the host, and the new caches on the device.
        """
        if self.pair.layout is not None:
            raise OptimizeError(
                "this pair's decoder was opened for the numpy path (rewritten: runtime/decoder_graph.py)",
                "open the OrtPair with ProviderOptions(io_binding=True) to decode through IOBinding",
            )
        feed = decoder_feed(tokens, k_cache, v_cache, cross_k, cross_v, offset, cross_mask)
        logits, k_cache, v_cache = self._run(self.pair.decoder, feed, host_outputs=(_LOGITS,), device_outputs=(_OUT_K, _OUT_V))
        return logits.numpy(), k_cache, v_cache


class BoundInference:
    """The search's Inference protocol over a BoundPair, bound to one encoded batch.

    cross_k, cross_v: OrtValues from BoundPair.encode, shape = (L, N, T', D), float32.
    cross_mask: shape = (N, 1, 1, T'), float32 additive mask, or None when all rows are valid.
    cache_len: self-cache length S (the fixed dim of a v1 pair, else max steps + 1).

    A decoder with a fixed batch dim of 1 (the published v1 layout) runs row by row; each
    row then has its own OrtValues, so a beam reorder only permutes references.
    """

    def __init__(self, bound: BoundPair, cross_k: ort.OrtValue, cross_v: ort.OrtValue, cross_mask: np.ndarray | None, cache_len: int):
        self.bound = bound
        self._enc = (cross_k, cross_v, cross_mask)
        self.cache_len = cache_len
        self._per_row = bound.pair.max_decoder_rows is not None

    def start(self, beam: int) -> None:
        # Row n * beam + b holds beam b of utterance n, as OrtInference and torch's repeat().view().
        cross_k, cross_v, mask = self._enc
        n = cross_k.shape()[1]
        if self._per_row:
            self._start_per_row(cross_k, cross_v, n, beam)
            return
        info = self.bound.pair.info
        if beam > 1:
            cross_k, cross_v = self.bound.gather_rows(cross_k, cross_v, np.repeat(np.arange(n), beam))
        self._cross_k, self._cross_v = cross_k, cross_v
        self._mask = None if mask is None else self.bound.to_device(np.repeat(mask, beam, axis=0))
        # K and V may start as one buffer: the decoder writes new output tensors, never its inputs
        self._k = self._v = self.bound.zeros((info.num_decoder_layers, n * beam, self.cache_len, info.num_head, info.head_dim))

    def _start_per_row(self, cross_k: ort.OrtValue, cross_v: ort.OrtValue, n: int, beam: int) -> None:
        info = self.bound.pair.info
        per_utt = [(cross_k, cross_v)] if n == 1 else [self.bound.gather_rows(cross_k, cross_v, [u]) for u in range(n)]
        self._cross = [per_utt[r // beam] for r in range(n * beam)]  # beams share their utterance's OrtValues
        zero = self.bound.zeros((info.num_decoder_layers, 1, self.cache_len, info.num_head, info.head_dim))
        self._k = [zero] * (n * beam)
        self._v = [zero] * (n * beam)

    def step(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        """tokens: shape = (rows,), int64 -> logits, shape = (rows, V), float32."""
        if self._per_row:
            return self._step_per_row(tokens, offset)
        logits, self._k, self._v = self.bound.decoder_step(
            tokens.reshape(-1, 1), self._k, self._v, self._cross_k, self._cross_v, offset, self._mask
        )
        return logits[:, 0, :]

    def _step_per_row(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        outs = [
            self.bound.decoder_step(tokens[r : r + 1].reshape(1, 1), self._k[r], self._v[r], *self._cross[r], offset)
            for r in range(len(tokens))
        ]
        self._k = [o[1] for o in outs]
        self._v = [o[2] for o in outs]
        return np.concatenate([o[0][:, 0, :] for o in outs], axis=0)

    def reorder(self, rows: np.ndarray) -> None:
        if np.array_equal(rows, np.arange(len(rows))):
            return
        if self._per_row:
            self._k = [self._k[r] for r in rows]
            self._v = [self._v[r] for r in rows]
            return
        # The whole S axis moves (positions >= offset are never read, but a prefix copy would need
        # a second graph); with the dynamic cache S is only max steps + 1.
        self._k, self._v = self.bound.gather_rows(self._k, self._v, rows)
