"""Token timestamps from FireRedASR2's CTC head by forced alignment (`optimize transcribe --timestamps`).

The decoder's hypothesis is aligned to the encoder's CTC log-probabilities (the pair's third
encoder output, `optimize export --with-ctc`), as the official FireRedASR2 does
(fireredasr2/models/fireredasr_aed.py get_token_timestamp_torchaudio, module/ctc.py):
Viterbi over the blank-interleaved token sequence, then each token starts at its first
frame and ends where the next token starts. `audio_times` applies the official user-level
fixes (fireredasr2/asr.py _get_and_fix_timestamp): 60 ms earlier, clipped to the audio.
"""

from __future__ import annotations

import numpy as np

BLANK = 0  # FireRedASR's <blank>, the CTC blank
SUBSAMPLING = 4  # fbank frames per encoder frame (two stride-2 convs)
FRAME_SHIFT_MS = 10  # fbank hop
WINDOW_MS = 25  # fbank window; the last token ends a window after the last frame's start
SHIFT_S = 0.06  # the official user-level shift ("shift 40ms" in its comment, 0.06 in its code)

Times = tuple[tuple[float, float], ...]


def forced_align(log_probs: np.ndarray, tokens: tuple[int, ...]) -> np.ndarray | None:
    """Best CTC path that spells `tokens`: the label (token or blank) of each frame.

    log_probs: shape = (T', V), float32, log-softmax of one utterance's valid frames.
    tokens: ids without blank. Returns shape = (T',), int64, or None when the tokens cannot
    fit: T' < len(tokens) + repeats (a repeated token needs a blank between), where
    torchaudio's forced_align (which the official code calls) refuses too. Ties as in
    torchaudio's kernel: stay, else the previous state, else the skip; the path ends on the
    last token only when strictly better than the final blank. Sums are float32, as there.
    """
    y = np.asarray(tokens, dtype=np.int64)
    t_len, n = log_probs.shape[0], len(y)
    repeats = int(np.count_nonzero(y[1:] == y[:-1])) if n else 0
    if n == 0 or t_len < n + repeats:
        return None
    labels = np.full(2 * n + 1, BLANK, dtype=np.int64)
    labels[1::2] = y
    s_len = len(labels)
    # a skip s-2 -> s is allowed into a token that differs from the token two states back
    skip = np.zeros(s_len, dtype=bool)
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    neg = np.float32(-np.inf)
    alpha = np.full(s_len, neg, dtype=np.float32)
    alpha[:2] = log_probs[0, labels[:2]]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, t_len):
        prev1 = np.concatenate([[neg], alpha[:-1]])
        prev2 = np.where(skip, np.concatenate([[neg, neg], alpha[:-2]]), neg)
        cand = np.stack([alpha, prev1, prev2])
        choice = np.argmax(cand, axis=0)  # first maximum: stay before s-1 before s-2
        back[t] = choice
        alpha = cand[choice, np.arange(s_len)] + log_probs[t, labels]
    state = s_len - 1 if alpha[-1] > alpha[-2] else s_len - 2
    if not np.isfinite(alpha[state]):
        return None
    path = np.empty(t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        path[t] = labels[state]
        state -= int(back[t, state])  # a numpy int8 would overflow past state 127 (64+ tokens)
    return path


def token_times(path: np.ndarray) -> Times:
    """Per-token (start, end) seconds from a frame alignment, as FireRedASR2's ctc_alignment_to_timestamp.

    A token starts at (its first frame + 1) x 40 ms and ends where the next one starts; the
    last ends at T' x 40 ms + 25 ms. Ends longer than twice the average duration are cut
    to max(1.5 x average, the token's own CTC run + 1 frame); ends are rounded to 1 ms.
    """
    step = FRAME_SHIFT_MS * SUBSAMPLING  # ms per encoder frame (integers, so the floats equal the official ones)
    starts, runs = [], []
    t, t_len = 0, len(path)
    while t < t_len:
        token = path[t]
        t += 1
        if token == BLANK:
            continue
        first = t
        while t < t_len and path[t] == token:
            t += 1
        starts.append(step * first / 1000.0)
        runs.append((t - first + 1) * step / 1000.0)
    ends = starts[1:] + [(step * t_len + WINDOW_MS) / 1000.0]
    avg = sum(e - s for s, e in zip(starts, ends)) / len(ends)
    ends = [round(s + max(1.5 * avg, run), 3) if e - s > 2 * avg else round(e, 3) for s, e, run in zip(starts, ends, runs)]
    return tuple(zip(starts, ends))


def align(log_probs: np.ndarray, tokens: tuple[int, ...]) -> Times | None:
    """(start, end) per token, or None when the alignment is impossible (the official code gives None too).

    log_probs: shape = (T', V), float32, the utterance's valid frames only. Blank ids in
    the hypothesis are dropped before aligning, as the official code does.
    """
    path = forced_align(log_probs, tuple(t for t in tokens if t != BLANK))
    return None if path is None else token_times(path)


def audio_times(times: Times | None, n_tokens: int, duration: float) -> Times:
    """The official user-level times (FireRedAsr2.transcribe): shifted 60 ms earlier, clipped to the audio.

    Without an alignment the tokens share the duration evenly, as the official fallback.
    Starts and ends are rounded to 1 ms; a token starting at the very end is pulled 1 ms
    earlier per token from the end, so that none has zero length there.
    """
    out = []
    if times is None:
        avg = duration / n_tokens if n_tokens else 0.0
        last_end = duration
        for i in range(n_tokens):
            start, end = min(max(0.0, i * avg), last_end), min((i + 1) * avg, duration)
            last_end = end
            out.append([round(start, 3), round(end, 3)])
    else:
        last_end = duration
        for start, end in times:
            start, end = min(max(0.0, start - SHIFT_S), last_end), min(max(0.0, end - SHIFT_S), duration)
            last_end = end
            out.append([round(start, 3), round(end, 3)])
    for i in range(len(out)):
        row = out[-(i + 1)]
        if abs(duration - row[0]) < 0.001:
            row[0] = duration - (i + 1) * 0.001
        if i != 0 and abs(duration - row[1]) < 0.001:
            row[1] = duration - i * 0.001
    return tuple((s, e) for s, e in out)


# A finite "log 0": impossible paths stay comparable (and -inf - -inf never makes a nan).
LOG_ZERO = np.float32(-1e10)


class PrefixScorer:
    """CTC prefix scores for joint CTC/attention decoding (Watanabe et al., 2017; ESPnet's CTCPrefixScore).

    Tracks, per search row, the CTC forward variables of its hypothesis h over the encoder
    frames: r[t, 0] = log P(h, the path at frame t is inside h's last token), r[t, 1] = ... in a
    blank after it, and psi = log P(h is a prefix of the transcript). `score` gives, for
    candidate tokens c, psi(h + c) - psi(h); for eos, the whole-transcript probability
    log(r[T'-1, 0] + r[T'-1, 1]) - psi(h). `advance` keeps the states the search chose.

    log_probs: shape = (N, T', V), float32, the CTC head's log-softmax; valid: shape = (N,),
    int64, frames per utterance (past them a frame is blank with certainty, so scores equal
    those over the valid frames alone); rows_per_utt: search rows per utterance (the beam).
    """

    def __init__(self, log_probs: np.ndarray, valid: np.ndarray, rows_per_utt: int, eos: int):
        n, t_len, _ = log_probs.shape
        x = np.maximum(log_probs.astype(np.float32), LOG_ZERO)
        padded = np.arange(t_len)[None, :] >= np.asarray(valid)[:, None]
        x[padded] = LOG_ZERO
        x[padded, BLANK] = 0.0
        self.x = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T', N, V): per-frame slices are contiguous
        self.utt = np.arange(n).repeat(rows_per_utt)  # (R,): each row's utterance
        self.eos = eos
        self.blank = self.x[:, self.utt, BLANK]  # (T', R): each row's blank log-prob per frame, gathered once
        self.r = np.full((t_len, 2, len(self.utt)), LOG_ZERO, dtype=np.float32)
        self.r[:, 1] = np.cumsum(self.blank, axis=0)  # the empty hypothesis: blanks only
        self.psi = np.zeros(len(self.utt), dtype=np.float32)
        self.last = np.full(len(self.utt), -1, dtype=np.int64)  # each hypothesis's last token (-1: none yet)
        self.length = np.zeros(len(self.utt), dtype=np.int64)  # tokens in each hypothesis
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def score(self, cands: np.ndarray) -> np.ndarray:
        """cands: shape = (R, K), int64 token ids -> psi(h + c) - psi(h), shape = (R, K), float32."""
        t_len = self.x.shape[0]
        xc = self.x[:, self.utt[:, None], cands]  # (T', R, K)
        r = self.r
        # the paths h + c can extend at frame t: from h ending at t - 1, but after a blank when c repeats h's last token
        phi = np.where((cands == self.last[:, None])[None], r[:, 1, :, None], np.logaddexp(r[:, 0], r[:, 1])[:, :, None])
        rn = np.full(xc.shape, LOG_ZERO, dtype=np.float32)
        rb = np.full(xc.shape, LOG_ZERO, dtype=np.float32)
        rn[0] = np.where((self.length == 0)[:, None], xc[0], LOG_ZERO)
        # h + c needs len(h) + 1 frames: no row's c can start before frame min(len(h))
        start = max(1, int(self.length.min()))
        for t in range(start, t_len):
            rn[t] = np.logaddexp(rn[t - 1], phi[t - 1]) + xc[t]
            rb[t] = np.logaddexp(rn[t - 1], rb[t - 1]) + self.blank[t, :, None]
        terms = phi[start - 1 : -1] + xc[start:]
        psi = np.logaddexp.reduce(np.concatenate([rn[:1], terms]), axis=0) if len(terms) else rn[0]
        psi = np.where(cands == self.eos, np.logaddexp(r[-1, 0], r[-1, 1])[:, None], psi)
        psi[cands == BLANK] = LOG_ZERO  # never a transcript token
        self._pending = (np.stack([rn, rb], axis=1), psi)  # (T', 2, R, K), (R, K)
        return psi - self.psi[:, None]

    def advance(self, parents: np.ndarray, picks: np.ndarray, tokens: np.ndarray) -> None:
        """New row i = row parents[i]'s hypothesis + its candidate picks[i] (a column of the last `score`), token tokens[i]."""
        states, psi = self._pending
        self.r = states[:, :, parents, picks]
        self.psi = psi[parents, picks]
        self.last = tokens.astype(np.int64)
        self.length = self.length[parents] + 1
