"""The label join's state on disk: pending predictions, held labels and finished ids in RocksDB.

Labels come seconds to days after their events, so the predictions waiting for them, and the ids
remembered after them, can outgrow memory. With ``UNDERTOW_STATE_DIR`` set, the model step keeps
them in an embedded RocksDB (through ``rocksdict``, as Quix Streams keeps its state) instead of
Python dicts and heaps: :class:`RocksJoinState` is at once the join's ``pending`` store and its
deadline map (id -> state, deadline, value, with the deadline order), so nothing in memory grows
with the number of ids.

Snapshots follow Bytewax's epochs. Pickling the state (what Bytewax does with the model step's
snapshot at each epoch end) never pickles its contents: it makes a RocksDB checkpoint (a flush of
what changed since the last one, then hard links to the table files: the cost is O(what changed))
and pickles a small handle, the directory and the checkpoint's number with a few counters.
Unpickling keeps the handle only; :meth:`RocksJoinState.attach` (the model step calls it when it
resumes) rebuilds the live database from that checkpoint, so the state after a kill -9 is the
state of the snapshot Bytewax resumes from. Anything else that unpickles a snapshot (a test, a
person reading the recovery store) reads the checkpoint read-only and changes nothing. The newest
``keep`` checkpoints are kept; on resume, those newer than the resumed one (a future that never
committed) are deleted, so the directory does not grow with restarts.

Layout: ``<state dir>/<model step>/live-<ns>/`` is the database in use, ``ckpt-<n>/`` the
checkpoints.
Keys, all in one column family::

    p<id>                                -> pickle((key, features, scores, event_ts))
    e<id>                                -> pickle((state, deadline, value, seq))
    o<state><deadline + 2**63, 8 bytes BE><id> -> b""    (the deadline order of each state)

Ordering ``o`` keys by bytes orders them by (deadline, id) as the in-memory heap does (UTF-8
bytes sort as code points), so what comes out, and in what order, is the same with either store.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Checkpoint,
    Options,
    Rdict,
    WriteOptions,
)

from undertow.errors import UndertowError
from undertow.label_join import PendingPrediction

_P = b"p"
_E = b"e"
_O = b"o"
_OFFSET = 1 << 63
_CKPT = re.compile(r"ckpt-(\d{10})$")
_PICKLE = pickle.HIGHEST_PROTOCOL

#: Checkpoints kept by default: the one a restart resumes from can be older than the newest
#: (Bytewax commits an epoch's snapshots after the next ones may have been taken).
DEFAULT_KEEP = 3


class StoreError(UndertowError):
    """The state directory cannot give back the state a snapshot names."""


def _enc_deadline(deadline: int) -> bytes:
    return (deadline + _OFFSET).to_bytes(8, "big")


def _order_key(state: int, deadline: int, ident: bytes) -> bytes:
    return _O + bytes((state,)) + _enc_deadline(deadline) + ident


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(64 << 20))  # bounds the memory reads use
    table.set_bloom_filter(10, False)  # point lookups by id mostly miss a table file
    opts.set_block_based_table_factory(table)
    opts.set_write_buffer_size(64 << 20)
    opts.set_max_write_buffer_number(2)
    return opts


class RocksJoinState:
    """Pending predictions and the deadline map of one model step's label join, in RocksDB.

    Use it as the join's ``pending`` store (:class:`~undertow.label_join.PendingStore`); its
    ``deadlines`` attribute is the join's deadline map, in the same database. ``path`` is this model
    step's own directory; a new state empties it. ``keep`` checkpoints are kept.
    """

    def __init__(self, path: str | Path, *, keep: int = DEFAULT_KEEP, states: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.path = Path(path)
        self.keep = keep
        self._sizes = [0] * states
        self._pending = 0
        self._lower = [-_OFFSET] * states  # no deadline of a state is below this
        self._seq = 0  # insertion order of ids, for clear()
        self._ckpt = 0  # the newest checkpoint's number
        self._dirty = True
        self._db: Rdict | None = None
        self._read_only = False
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self._checkpoints():
            shutil.rmtree(self.path / f"ckpt-{old:010d}")
        self._open(self._new_live())

    @property
    def deadlines(self) -> _Deadlines:
        """The join's deadline map, kept in the same database."""
        return _Deadlines(self)

    # -- the database --------------------------------------------------------------------------

    def _open(self, where: Path, *, read_only: bool = False) -> None:
        if read_only:
            self._db = Rdict(str(where), _options(), access_type=AccessType.read_only())
        else:
            self._db = Rdict(str(where), _options())
            w = WriteOptions()
            w.disable_wal = True  # durability is the checkpoint's, taken at each snapshot
            self._db.set_write_options(w)
        self._read_only = read_only

    @property
    def db(self) -> Rdict:
        if self._db is None:  # unpickled and never attached: read the checkpoint, change nothing
            where = self.path / f"ckpt-{self._ckpt:010d}"
            if not where.is_dir():
                raise StoreError(self._missing(where))
            self._open(where, read_only=True)
        assert self._db is not None
        return self._db

    def _missing(self, where: Path) -> str:
        return (f"state directory {self.path}: checkpoint {where.name} of the snapshot to resume "
                f"from is gone (deleted, or older than the newest {self.keep} kept: raise "
                "UNDERTOW_STATE_KEEP)")

    def _new_live(self) -> Path:
        """A new, empty live directory; the others (of a run or an execution that ended) go.

        Each is new (``live-<ns>``): a resume in the same process (Bytewax's own tests abort and
        resume in one) must not open a directory an older handle may still hold locked."""
        for name in os.listdir(self.path):
            if name.startswith("live"):
                shutil.rmtree(self.path / name, ignore_errors=True)
        live = self.path / f"live-{time.time_ns():x}"
        live.mkdir()
        return live

    def _checkpoints(self) -> list[int]:
        found = []
        for name in os.listdir(self.path):
            m = _CKPT.match(name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def checkpoint(self) -> int:
        """Make a checkpoint of the database as it is now (if anything changed since the last
        one) and drop all but the newest ``keep``; its number."""
        if not self._dirty:
            return self._ckpt
        if self._read_only:
            raise StoreError(f"state directory {self.path}: a read-only state cannot checkpoint")
        n = self._ckpt + 1
        where = self.path / f"ckpt-{n:010d}"
        shutil.rmtree(where, ignore_errors=True)
        Checkpoint(self.db).create_checkpoint(str(where))
        self._ckpt = n
        self._dirty = False
        for old in self._checkpoints():
            if old <= n - self.keep:
                shutil.rmtree(self.path / f"ckpt-{old:010d}", ignore_errors=True)
        return n

    def attach(self) -> None:
        """Resume from the checkpoint this state was unpickled with: the live database becomes
        a copy of it (hard links to its table files), checkpoints newer than it are deleted."""
        if self._db is not None and not self._read_only:
            return
        if self._db is not None:
            self._db.close()
            self._db = None
        src = self.path / f"ckpt-{self._ckpt:010d}"
        if not src.is_dir():
            raise StoreError(self._missing(src))
        for newer in self._checkpoints():
            if newer > self._ckpt:
                shutil.rmtree(self.path / f"ckpt-{newer:010d}")
        live = self._new_live()
        for name in os.listdir(src):
            if name.endswith(".sst"):  # immutable: shared, never copied
                os.link(src / name, live / name)
            else:  # small, and RocksDB may rewrite them
                shutil.copy2(src / name, live / name)
        self._open(live)
        self._dirty = False

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __getstate__(self) -> dict[str, Any]:
        """A handle, never the contents: a checkpoint is made if anything changed since the
        last one (this is how a Bytewax snapshot stays O(what changed))."""
        if self._db is not None and not self._read_only:
            self.checkpoint()
        return {"path": str(self.path), "keep": self.keep, "ckpt": self._ckpt,
                "sizes": list(self._sizes), "pending": self._pending,
                "lower": list(self._lower), "seq": self._seq}

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.path = Path(s["path"])
        self.keep = s["keep"]
        self._ckpt = s["ckpt"]
        self._sizes = s["sizes"]
        self._pending = s["pending"]
        self._lower = s["lower"]
        self._seq = s["seq"]
        self._dirty = False
        self._db = None
        self._read_only = False

    # -- the pending store (PendingStore) ------------------------------------------------------

    def __setitem__(self, event_id: str, p: PendingPrediction) -> None:
        k = _P + event_id.encode()
        db = self.db
        if db.get(k) is None:
            self._pending += 1
        db[k] = pickle.dumps((p.key, p.features, p.scores, p.event_ts), _PICKLE)
        self._dirty = True

    def get(self, event_id: str) -> PendingPrediction | None:
        raw = self.db.get(_P + event_id.encode())
        return None if raw is None else _pending(event_id, raw)

    def pop(self, event_id: str) -> PendingPrediction:
        k = _P + event_id.encode()
        db = self.db
        raw = db.get(k)
        if raw is None:
            raise KeyError(event_id)
        del db[k]
        self._pending -= 1
        self._dirty = True
        return _pending(event_id, raw)

    def __delitem__(self, event_id: str) -> None:
        self.pop(event_id)

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self.db.get(_P + event_id.encode()) is not None

    def __iter__(self) -> Iterator[str]:
        for k in self.db.keys(from_key=_P):
            if not k.startswith(_P):
                break
            yield k[1:].decode()

    def __len__(self) -> int:
        return self._pending

    def values(self) -> Iterator[PendingPrediction]:
        """Every pending prediction; one changed by the caller while it holds it (a removed
        challenger's score dropped) is written back when the caller asks for the next."""
        db = self.db
        for k, raw in db.items(from_key=_P):
            if not k.startswith(_P):
                break
            p = _pending(k[1:].decode(), raw)
            before = (p.features, dict(p.scores))
            yield p
            if (p.features, p.scores) != before:
                db[k] = pickle.dumps((p.key, p.features, p.scores, p.event_ts), _PICKLE)
                self._dirty = True


class _Deadlines:
    """The deadline-map face of a :class:`RocksJoinState` (the join's ``deadlines``)."""

    __slots__ = ("s",)

    def __init__(self, s: RocksJoinState) -> None:
        self.s = s

    def __len__(self) -> int:
        return sum(self.s._sizes)

    def get(self, key: str) -> tuple[int, int, Any] | None:
        raw = self.s.db.get(_E + key.encode())
        if raw is None:
            return None
        state, deadline, value, _ = pickle.loads(raw)
        return state, deadline, value

    def put(self, key: str, state: int, deadline: int, value: Any = None) -> None:
        s = self.s
        db = s.db
        ident = key.encode()
        ek = _E + ident
        raw = db.get(ek)
        if raw is not None:
            ostate, odeadline, _, seq = pickle.loads(raw)
            s._sizes[ostate] -= 1
            del db[_order_key(ostate, odeadline, ident)]
        else:
            s._seq += 1
            seq = s._seq
        db[ek] = pickle.dumps((state, deadline, value, seq), _PICKLE)
        db[_order_key(state, deadline, ident)] = b""
        s._sizes[state] += 1
        if deadline < s._lower[state]:
            s._lower[state] = deadline
        s._dirty = True

    def pop(self, key: str) -> tuple[int, int, Any] | None:
        s = self.s
        db = s.db
        ident = key.encode()
        ek = _E + ident
        raw = db.get(ek)
        if raw is None:
            return None
        state, deadline, value, _ = pickle.loads(raw)
        del db[ek]
        del db[_order_key(state, deadline, ident)]
        s._sizes[state] -= 1
        s._dirty = True
        return state, deadline, value

    def count(self, state: int) -> int:
        return self.s._sizes[state]

    def contains(self, state: int, key: str) -> bool:
        e = self.get(key)
        return e is not None and e[0] == state

    def iter_ids(self, state: int) -> Iterator[str]:
        prefix = _O + bytes((state,))
        for k in self.s.db.keys(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield k[10:].decode()

    def _head(self, state: int) -> tuple[int, bytes] | None:
        """The earliest (deadline, id) of ``state``, or None; tightens its lower bound."""
        s = self.s
        if s._sizes[state] == 0:
            return None
        prefix = _O + bytes((state,))
        it = s.db.iter()
        it.seek(prefix + _enc_deadline(s._lower[state]))
        if not it.valid():
            return None
        k = it.key()
        if not k.startswith(prefix):
            return None
        deadline = int.from_bytes(k[2:10], "big") - _OFFSET
        s._lower[state] = deadline
        return deadline, k[10:]

    def pop_due(self, horizons: tuple[int | None, ...]) -> tuple[str, int, int, Any] | None:
        """As :meth:`undertow.label_join.DeadlineMap.pop_due`: the earliest entry, over the
        states, whose deadline is before its state's horizon, removed; None if nothing is due."""
        s = self.s
        best: tuple[int, bytes] | None = None
        for state, horizon in enumerate(horizons):
            if horizon is None or s._sizes[state] == 0 or s._lower[state] >= horizon:
                continue
            head = self._head(state)
            if head is not None and head[0] < horizon and (best is None or head < best):
                best = head
        if best is None:
            return None
        key = best[1].decode()
        state, deadline, value = self.pop(key)  # type: ignore[misc]
        return key, state, deadline, value

    def pop_oldest(self, state: int) -> tuple[str, int, int, Any] | None:
        head = self._head(state)
        if head is None:
            return None
        key = head[1].decode()
        st, deadline, value = self.pop(key)  # type: ignore[misc]
        return key, st, deadline, value

    def clear(self, state: int) -> list[tuple[str, Any]]:
        """Remove every entry of ``state``; their ``(id, value)`` in the order the ids were
        first added (as a dict's insertion order)."""
        gone = []
        for key in list(self.iter_ids(state)):
            raw = self.s.db.get(_E + key.encode())
            assert raw is not None
            _, _, value, seq = pickle.loads(raw)
            gone.append((seq, key, value))
            self.pop(key)
        gone.sort(key=lambda g: g[0])
        return [(k, v) for _, k, v in gone]


def _pending(event_id: str, raw: bytes) -> PendingPrediction:
    key, features, scores, event_ts = pickle.loads(raw)
    return PendingPrediction(event_id, key, features, scores, event_ts)
