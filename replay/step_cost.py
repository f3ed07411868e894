"""Step time from calibrated operators.

A step that computes ``T`` tokens for ``S`` sequences on a model of ``L`` decoder
layers takes::

    embedding(T) + final_layernorm(T)
    + L * [ sum of per-layer dense ops(T) + attention(batch) + tp_allreduce(T) * 2 ]
    + lm_head(S) + sampler(S) + host_overhead(S, T) + step_overhead_s

all multiplied by ``scale`` (drift correction: the machine's speed when the run
was recorded relative to when it was profiled).

Data-parallel ranks of an expert-parallel MoE model step together
(:meth:`StepCost.group_step_s`): each rank's own layers as above without the MoE
layers, and the MoE layers once for the group — their experts see every rank's
tokens (vLLM all-gathers the DP ranks' hidden states before the experts and
reduce-scatters after). When every rank's step is small enough to run as a CUDA graph
vLLM pads all ranks to the largest one, so the experts then see ``ranks x largest``
tokens; otherwise the ranks' own token counts.

Dense ops are looked up by token count, ``lm_head``/``sampler`` by sequences (vLLM
computes logits for the last scheduled token of every request in the step).
Attention is looked up for the largest prefill chunk together with all decodes
(the profile measured mixed batches of one prefill and ``n`` decodes); further
prefill chunks add their own prefill-only attention. Decodes with uneven KV lengths
use ``t_mean + alpha * (t_max - t_mean)`` with the profiled skew ``alpha`` of
their bucket (see :mod:`mist.calibrate.skew`).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace
from functools import cached_property

from mist.calibrate.lookup import GridLookup
from mist.calibrate.skew import SkewAlpha


@dataclass(frozen=True)
class StepCost:
    """Compiled per-step cost tables (all seconds).

    Attributes
    ----------
    dense_s : tuple
        Index ``T``: embedding + final norm + ``L`` x per-layer dense ops + TP
        all-reduces, for ``T`` tokens.
    per_seq_s : tuple
        Index ``S``: lm_head + sampler for ``S`` sequences.
    attention : GridLookup
        One layer's attention by (prefill_chunk, kv_prefill, n_decode, kv_decode).
    num_layers : int
    skew_alpha : float
        Default skew alpha (used when ``skew`` is absent or finds no bucket).
    skew : SkewAlpha or None
        Bucketed alphas from the profile's ``skew_fit.csv``.
    overhead_s : float
        Constant host time added to every step.
    host : GridLookup or None
        Host time of a step outside the forward pass by (sequences, tokens).
    scale : float
        Multiplies every step's duration.
    moe_s : tuple
        Data-parallel expert-parallel groups only (else empty: the MoE layers are in
        ``dense_s``): all MoE layers' expert time by the tokens of the whole group.
    exchange_s, exchange_s_per_token : float
        Expert exchange of all MoE layers (all-gather + reduce-scatter): a fixed cost
        per step and the cost of each token a rank receives from the others.
    graph_tokens : int
        Largest step vLLM runs as a CUDA graph; steps of at most this many tokens on
        every rank are padded to the largest rank's.
    """

    dense_s: tuple
    per_seq_s: tuple
    attention: GridLookup
    num_layers: int
    skew_alpha: float = 0.0
    skew: SkewAlpha | None = None
    overhead_s: float = 0.0
    host: GridLookup | None = None
    scale: float = 1.0
    moe_s: tuple = ()
    exchange_s: float = 0.0
    exchange_s_per_token: float = 0.0
    graph_tokens: int = 0

    @cached_property
    def _decode_only(self) -> GridLookup:
        return self.attention.leading_slice(2)

    def _attention_at(self, c: float, k: float, n: float, kv: float) -> float:
        """One layer's attention; decode-only queries use the cheaper 2-D slice."""
        if c or k:
            return self.attention(c, k, n, kv)
        return self._decode_only.bilinear(n, kv)

    def attention_s(self, prefills: list, n_decode: int, kv_sum: int, kv_max: int,
                    kv_min: int | None = None) -> float:
        """Attention time of all layers (s) for prefill chunks ``[(chunk, kv_before)]``
        and ``n_decode`` decodes whose KV lengths sum to ``kv_sum`` (max ``kv_max``,
        min ``kv_min``; without ``kv_min`` the default skew alpha applies)."""
        c0, k0 = max(prefills) if prefills else (0, 0)
        kv_mean = kv_sum / n_decode if n_decode else 0.0
        if c0 or k0:  # the 4-D grid: the corners of the first three axes found once for both KV lengths
            grid = self.attention
            head = grid.corners(c0, k0, n_decode)

            def at_kv(kv: float) -> float:
                return grid.total_along(head, 3, kv)  # (grid.total(grid.corners(kv, start=3, head=head)))
        else:
            decode = self._decode_only

            def at_kv(kv: float) -> float:
                return decode.bilinear(n_decode, kv)
        t = at_kv(kv_mean)
        if n_decode > 1 and kv_max > kv_mean:
            alpha = self.skew_alpha
            if self.skew is not None and kv_min is not None:
                alpha = self.skew(c0, n_decode, kv_min, kv_mean, kv_max, k0)
            if alpha:
                t_max = at_kv(kv_max)
                if t_max > t:
                    t += alpha * (t_max - t)
        if len(prefills) > 1:
            first = True
            for c, k in prefills:
                if first and (c, k) == (c0, k0):
                    first = False
                    continue
                t += self._attention_at(c, k, 0, 0)
        return t * self.num_layers

    @cached_property
    def _decode_rows(self) -> dict:
        """Per decode count ``n``: what a decode-only step's duration needs that depends on
        ``n`` alone (see :meth:`decode_s`), filled as counts are met."""
        return {}

    def _decode_row(self, n: int) -> tuple:
        """``(dense + per-sequence s, host s or None, grid offset of n's row, n's weight)``."""
        dense, per_seq = self.dense_s, self.per_seq_s
        d = dense[n] if n < len(dense) else dense[-1] * n / (len(dense) - 1)
        s = per_seq[n] if n < len(per_seq) else per_seq[-1] * n / (len(per_seq) - 1)
        grid = self._decode_only
        ax = grid.axes[0]
        if n <= ax[0]:
            i, fx = 0, 0.0
        elif n >= ax[-1]:
            i, fx = len(ax) - 1, 0.0
        else:
            i = bisect_right(ax, n) - 1
            fx = (n - ax[i]) / (ax[i + 1] - ax[i])
        row = (d + s, self.host(n, n) if self.host is not None else None, i * grid.strides[0], fx)
        self._decode_rows[n] = row
        return row

    def decode_s(self, n: int, kv_sum: int, kv_max: int, kv_min: int) -> float:
        """:meth:`step_s` of a decode-only step of ``n >= 1`` sequences (``n`` tokens, no
        prefill), bit for bit: the terms that depend on ``n`` alone are kept per ``n`` and
        the decode-only attention grid is read inline (the replay's hottest call)."""
        row = self._decode_rows.get(n) or self._decode_row(n)
        grid = self._decode_only
        ay, vals, sx = grid.axes[1], grid.values, grid.strides[0]
        ds, host, o0, fx = row
        kv_mean = kv_sum / n
        # (_row_at(vals, ay, sx, o0, fx, kv_mean), inlined: the same arithmetic)
        if kv_mean <= ay[0]:
            o, fy = o0, 0.0
        elif kv_mean >= ay[-1]:
            o, fy = o0 + len(ay) - 1, 0.0
        else:
            j = bisect_right(ay, kv_mean) - 1
            o, fy = o0 + j, (kv_mean - ay[j]) / (ay[j + 1] - ay[j])
        t = vals[o] * (1.0 - fy) + (vals[o + 1] * fy if fy else 0.0)
        if fx:
            t = t * (1.0 - fx) + fx * (vals[o + sx] * (1.0 - fy) + (vals[o + sx + 1] * fy if fy else 0.0))
        if n > 1 and kv_max > kv_mean:
            skew = self.skew
            alpha = self.skew_alpha
            if skew is not None:
                alpha = skew(0, n, kv_min, kv_mean, kv_max, 0) if skew.table else skew.default
            if alpha:
                t_max = _row_at(vals, ay, sx, o0, fx, kv_max)
                if t_max > t:
                    t += alpha * (t_max - t)
        t = ds + t * self.num_layers + self.overhead_s
        if host is not None:
            t += host
        return t * self.scale

    def operators_only(self) -> StepCost:
        """This cost with no host time, constant overhead or drift scale: the operators'
        composition alone (what :mod:`mist.calibrate.host` fits the host time against)."""
        return replace(self, host=None, scale=1.0, overhead_s=0.0)

    def step_s(self, num_tokens: int, num_seqs: int, prefills: list, n_decode: int,
               kv_sum: int, kv_max: int, kv_min: int | None = None) -> float:
        """Duration (s) of one engine step."""
        dense = self.dense_s
        per_seq = self.per_seq_s
        d = dense[num_tokens] if num_tokens < len(dense) else dense[-1] * num_tokens / (len(dense) - 1)
        s = per_seq[num_seqs] if num_seqs < len(per_seq) else per_seq[-1] * num_seqs / (len(per_seq) - 1)
        t = d + s + self.attention_s(prefills, n_decode, kv_sum, kv_max, kv_min) + self.overhead_s
        if self.host is not None:
            t += self.host(num_seqs, num_tokens)
        return t * self.scale

    def group_step_s(self, own_s: list, tokens: list) -> float:
        """Duration (s) of one lockstep step of data-parallel ranks whose own steps
        (:meth:`step_s`, MoE layers excluded) take ``own_s`` and schedule ``tokens``
        (an idle rank: 0 s, 0 tokens). The group waits for its slowest rank and runs
        the MoE layers on all ranks' tokens (see the module docs)."""
        top = max(tokens)
        if top == 0:
            return max(own_s)
        if top <= self.graph_tokens:  # padded to the largest rank (CUDA graphs)
            total, received = top * len(tokens), top * (len(tokens) - 1)
        else:
            total = sum(tokens)
            received = total - min(tokens)
        moe = self.moe_s[total] if total < len(self.moe_s) else self.moe_s[-1] * total / (len(self.moe_s) - 1)
        exchange = self.exchange_s + self.exchange_s_per_token * received
        return max(own_s) + (moe + exchange) * self.scale


def _row_at(vals: tuple, ay: tuple, sx: int, o: int, fx: float, y: float) -> float:
    """:meth:`GridLookup.bilinear` at ``y`` on a 2-axis grid whose first argument sits at
    row offset ``o`` with weight ``fx`` (the same arithmetic, step for step)."""
    if y <= ay[0]:
        j, fy = 0, 0.0
    elif y >= ay[-1]:
        j, fy = len(ay) - 1, 0.0
    else:
        j = bisect_right(ay, y) - 1
        fy = (y - ay[j]) / (ay[j + 1] - ay[j])
    o += j
    v = vals[o] * (1.0 - fy) + (vals[o + 1] * fy if fy else 0.0)
    if fx:
        v = v * (1.0 - fx) + fx * (vals[o + sx] * (1.0 - fy) + (vals[o + sx + 1] * fy if fy else 0.0))
    return v
