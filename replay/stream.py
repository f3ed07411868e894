"""A replay in bounded memory: requests made as the clock reaches them, each finished
request's times kept in a few arrays, engine steps streamed to Parquet.

:func:`request_stream` turns a ``requests`` table into :class:`Request` objects in
arrival order, a chunk of rows at a time, for :class:`mist.replay.engine.Replay`'s
``arrivals``; a :class:`Recorder` (a replay client that sends nothing) keeps what the
simulated ``requests`` table needs of each request as it finishes, so a finished request
is dropped; a :class:`StepWriter` (a replay's step sink) writes the steps into a
Parquet file in row groups of :data:`ROW_GROUP_ROWS` rows, the layout
:func:`mist.traces.io.write_table` gives a whole table, so the file is the same byte for
byte as writing the table at the end.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mist.replay.config import EngineConfig
from mist.replay.request import Request
from mist.traces.errors import ReplayError
from mist.traces.schema import STEPS, from_columns

#: rows per Parquet row group: pyarrow's default, what ``pyarrow.parquet.write_table`` uses
ROW_GROUP_ROWS = 1024 * 1024
#: rows of the requests table turned into Request objects at a time
REQUEST_CHUNK = 4096


def arrival_times(requests: pa.Table, arrival: str) -> np.ndarray:
    """When each request reaches the simulated engine (s): ``arrival_s``, or with
    ``arrival="engine"`` the engine's stamp ``queued_s`` where recorded."""
    t = requests.column("arrival_s").to_numpy(zero_copy_only=False).astype(float)
    if arrival == "engine":
        q = requests.column("queued_s").fill_null(np.nan).to_numpy(zero_copy_only=False).astype(float)
        t = np.where(np.isnan(q), t, q)
    return t


def arrival_order(t: np.ndarray) -> np.ndarray:
    """Row indices by (arrival time, row): the order requests enter a replay."""
    return np.lexsort((np.arange(len(t)), t))


def request_stream(requests: pa.Table, t: np.ndarray, order: np.ndarray) -> Iterator[Request]:
    """The requests of ``requests`` arriving at ``t`` (s) in ``order``, made a chunk of
    :data:`REQUEST_CHUNK` rows at a time as they are asked for."""
    cols = requests.select(["request_id", "input_tokens", "output_tokens", "prompt_token_ids"])
    for lo in range(0, len(order), REQUEST_CHUNK):
        idx = order[lo:lo + REQUEST_CHUNK]
        part = cols.take(idx).to_pydict()
        ids, inp, out, tok = (part[k] for k in ("request_id", "input_tokens", "output_tokens", "prompt_token_ids"))
        for j, (i, ti) in enumerate(zip(idx.tolist(), t[idx].tolist())):
            yield Request(i, ids[j], ti, int(inp[j]), int(out[j]), tok[j])


class LazyIds:
    """Request ids of an Arrow column by position (in ``order``, if given), made as asked
    for (only error messages ask): as Python strings they held ~60 B a request."""

    def __init__(self, column: pa.ChunkedArray, order: np.ndarray | None = None):
        self.column, self.order = column, order

    def __getitem__(self, i: int) -> str:
        return self.column[int(i if self.order is None else self.order[i])].as_py()


def check_fits(ids, prompt: np.ndarray, output: np.ndarray, cfg: EngineConfig) -> None:
    """Raise ReplayError unless every request (``ids``, ``prompt``/``output`` tokens, in
    arrival order) can run: it fits in one replica's KV cache, and (chunked prefill off)
    its prompt in one step's token budget."""
    capacity = cfg.num_gpu_blocks * cfg.block_size
    if capacity < 1:
        raise ReplayError("the engine has no KV cache (0 blocks): the model's weights leave no room in "
                          "the device memory; give a run with more memory, a higher tensor parallelism "
                          "or num_gpu_blocks in its engine settings")
    prompt, output = np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64)
    if not cfg.enable_chunked_prefill:
        long = np.flatnonzero(prompt > cfg.max_num_batched_tokens)
        if len(long):
            raise ReplayError(f"{len(long)} prompt(s) exceed max_num_batched_tokens ({cfg.max_num_batched_tokens}) "
                              f"with chunked prefill off (first: {ids[long[0]]}, {prompt[long[0]]} "
                              "tokens): the engine could never schedule them")
    # the last sampled token is never fed back, so a request holds prompt + output - 1 tokens of KV
    need = prompt + output
    over = np.flatnonzero(need - 1 > capacity)
    if len(over):
        worst = over[np.argmax(need[over])]
        raise ReplayError(f"{len(over)} request(s) need more KV cache than the engine holds ({capacity} tokens; "
                          f"{ids[worst]} needs {need[worst] - 1}): vLLM would refuse "
                          "them; drop them from the trace or give more device memory")


class Recorder:
    """A replay client that sends nothing and keeps, by request index, what the
    simulated ``requests`` table needs of every request that finishes."""

    def __init__(self, n: int):
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        self.times = {k: np.full(n, np.nan) for k in ("queued_s", "scheduled_s", "first_token_s", "finished_s")}
        self.finished = 0

    def on_finish(self, req: Request, now: float) -> tuple:
        i = req.index
        self.cached_tokens[i] = req.cached_tokens
        t = self.times
        t["queued_s"][i] = req.queued_s
        t["scheduled_s"][i] = max(req.scheduled_s, req.queued_s)  # (aligned: planned before its stamp)
        if req.first_token_s is not None:
            t["first_token_s"][i] = req.first_token_s
        t["finished_s"][i] = now
        self.finished += 1
        return ()

    def columns(self) -> dict:
        """``cached_tokens`` and the timeline as columns (null where never set)."""
        out = {"cached_tokens": self.cached_tokens}
        out.update({k: pa.array(v, mask=np.isnan(v)) for k, v in self.times.items()})
        return out


class StepWriter:
    """A replay's step sink: writes ``steps`` rows to the Parquet file ``path`` (through
    a temporary file beside it, renamed into place by :meth:`close`)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        # the buffered rows, column by column (chunks of each): a row group is put
        # together one column at a time, so writing it adds one column, not a table
        self.chunks: list[list[pa.Array]] = [[] for _ in STEPS]
        self.buffered = 0
        self.rows = 0
        self.writer = pq.ParquetWriter(self.tmp, STEPS, compression="zstd")

    def __call__(self, columns: dict) -> None:
        part = from_columns(STEPS, columns)
        for chunks, column in zip(self.chunks, part.columns):
            chunks.extend(column.chunks)
        self.buffered += part.num_rows
        del part
        while self.buffered >= ROW_GROUP_ROWS:
            self._write(ROW_GROUP_ROWS)

    def _write(self, n: int) -> None:
        """Write the first ``n`` buffered rows as one row group (the same values, types
        and schema as one table written whole: the same bytes)."""
        arrays = []
        for i, field in enumerate(STEPS):
            whole = pa.chunked_array(self.chunks[i], type=field.type)
            self.chunks[i] = whole.slice(n).chunks  # (the rest; this column's written rows freed below)
            # (numpy owns the combined column, as it owned most of the chunks: their memory is reused)
            arrays.append(pa.array(np.concatenate([c.to_numpy() for c in whole.slice(0, n).chunks] or
                                                  [np.empty(0, field.type.to_pandas_dtype())]), type=field.type))
            del whole
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=STEPS))
        self.buffered -= n
        self.rows += n

    def close(self) -> int:
        """Write what is buffered, put the file in place; return the rows written."""
        if self.buffered or not self.rows:  # (an empty table is one empty row group)
            self._write(self.buffered)
        self.writer.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)
        return self.rows

    def abort(self) -> None:
        """Drop the partial file."""
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def step_columns(steps: list, first_id: int) -> dict:
    """``steps`` columns of the logged step tuples ``steps`` (see
    :meth:`mist.replay.engine.Replay._log`), numbered from ``first_id``."""
    names = ("replica", "start_s", "duration_s", "num_prefill_seqs", "prefill_tokens",
             "num_decode_seqs", "kv_tokens", "num_running", "num_waiting", "kv_blocks_used",
             "num_preempted")
    out = {"step_id": np.arange(first_id, first_id + len(steps), dtype=np.int64)}
    if not steps:
        out.update({n: np.asarray([], dtype=float if n.endswith("_s") else np.int64) for n in names})
        return out
    # one 2-D conversion (every count is an integer far below 2**53, so exact in float64)
    grid = np.array(steps, dtype=np.float64)
    out.update({n: grid[:, i] if n.endswith("_s") else grid[:, i].astype(np.int64) for i, n in enumerate(names)})
    return out
