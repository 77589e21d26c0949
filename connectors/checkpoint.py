"""Versioned model checkpoints in a model directory.

A checkpoint is a directory ``<root>/<model>/v<version>-n<labels learned>/`` holding
``model.pkl`` (the River model, pickled) and ``meta.json``: the model's name, class, version,
labels learned, rolling quality at that moment, the model step's event-time clock, the feature
spec it was served, the wall time it was written, the undertow version, a write sequence number
and the SHA-256 of ``model.pkl``. Writes are atomic (a temporary directory renamed into place),
loads verify the digest, and only the newest ``keep`` checkpoints of a model are kept, so the
directory has an end too.

"Newest" is the write order (``seq``), not the version: after a ``rollback`` the model step
serves an older version again, and its next checkpoints are the latest ones.

Pickle is what River models support for persistence (River's own docs save models this way);
the digest catches a truncated or altered file, not a malicious one: load only checkpoints you
wrote.

>>> import tempfile
>>> from river import linear_model
>>> store = ModelStore(tempfile.mkdtemp(), keep=2)
>>> path = store.write("fraud", linear_model.LogisticRegression(), version=3, labels_learned=10)
>>> path.name
'v000003-n000000000010'
>>> model, meta = store.load(path)
>>> (type(model).__name__, meta["version"], meta["labels_learned"])
('LogisticRegression', 3, 10)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from undertow.errors import CheckpointError

FORMAT = 1
log = logging.getLogger(__name__)


def _undertow_version() -> str:
    try:
        return metadata.version("undertow")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class ModelStore:
    """The checkpoints of every model under one root directory."""

    def __init__(self, root: str | os.PathLike[str], *, keep: int = 5) -> None:
        if keep <= 0:
            raise ValueError(f"keep must be > 0, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def write(
        self,
        name: str,
        model: Any,
        *,
        version: int,
        labels_learned: int,
        quality: dict[str, float] | None = None,
        clock_ms: int | None = None,
        wall_time: float | None = None,
        feature_spec: str | None = None,
        stream_digest: str | None = None,
    ) -> Path:
        """Write one checkpoint atomically and prune the oldest beyond ``keep``.

        ``feature_spec`` names the stream whose features the model was served and
        ``stream_digest`` is that stream's digest (its schema, target and features): bulk
        scoring refuses a checkpoint of another stream."""
        _check_name(name)
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        existing = self.list(name)
        meta = {
            "format": FORMAT,
            "name": name,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "version": version,
            "labels_learned": labels_learned,
            "quality": quality or {},
            "clock_ms": clock_ms,
            "feature_spec": feature_spec,
            "stream": feature_spec,
            "stream_digest": stream_digest,
            "written_at": time.time() if wall_time is None else wall_time,
            "undertow_version": _undertow_version(),
            "seq": _seq(existing[-1]) + 1 if existing else 1,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        final = model_dir / f"v{version:06d}-n{labels_learned:012d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
        try:
            (tmp / "model.pkl").write_bytes(blob)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            if final.exists():
                # The same version and count again (e.g. the first batch after a restart): move
                # the old one aside first, so the name always holds a whole checkpoint.
                aside = Path(tempfile.mkdtemp(prefix=".old-", dir=model_dir))
                os.replace(final, aside / final.name)
                os.replace(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.list(name)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def list(self, name: str) -> list[Path]:
        """The checkpoints of ``name``, oldest first: in write order (``seq``), then by name;
        one whose ``meta.json`` cannot be read comes first (it is pruned first)."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = [p for p in model_dir.iterdir() if p.is_dir() and p.name.startswith("v")]
        return sorted(found, key=lambda p: (_seq(p), p.name))

    def latest(self, name: str) -> Path | None:
        found = self.list(name)
        return found[-1] if found else None

    def resolve(self, ref: str, name: str) -> Path:
        """``latest`` (the newest checkpoint of ``name``), ``<model>/latest`` (the newest of
        another model), or a checkpoint path (absolute, or relative to the root)."""
        if ref == "latest" or ref.endswith("/latest"):
            if ref != "latest":
                name = ref.removesuffix("/latest")
            path = self.latest(name)
            if path is None:
                raise CheckpointError(f"no checkpoint of model {name!r} under {self.root}")
            return path
        path = Path(ref)
        return path if path.is_absolute() or path.exists() else self.root / ref

    @staticmethod
    def load(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
        """Read a checkpoint, checking its format and digest."""
        return load_checkpoint(path)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The model and metadata of the checkpoint directory ``path``."""
    p = Path(path)
    try:
        meta = json.loads((p / "meta.json").read_text())
        blob = (p / "model.pkl").read_bytes()
    except (OSError, ValueError) as ex:
        raise CheckpointError(f"cannot read checkpoint {p}: {ex}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} has format {meta.get('format')!r}, not {FORMAT}")
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {p} is corrupt: model.pkl does not match its digest")
    try:
        model = pickle.loads(blob)
    except Exception as ex:  # a class that moved, a truncated stream
        raise CheckpointError(f"cannot unpickle checkpoint {p}: {ex}") from None
    return model, meta


class Checkpointer:
    """Called after every batch of the model step: writes each model's checkpoint when due.

    The policy counts the labels the step has learned since it started (``counts.learned``, which
    only grows: a promotion or a swap does not set it back). A write that fails (disk full,
    permissions) is logged and counted in ``undertow_checkpoint_failures_total``; the dataflow
    goes on serving and the next write is tried when due again."""

    def __init__(
        self, store: ModelStore, policy: CheckpointPolicy, *, feature_spec: str | None = None,
        stream_digest: str | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.feature_spec = feature_spec
        self.stream_digest = stream_digest

    def __call__(self, learner: Any) -> None:
        from connectors import metrics

        learned = learner.counts.learned
        if not self.policy.due(learned):
            return
        for slot in list(learner.slots.values()):
            failures = metrics.CHECKPOINT_FAILURES.labels(model=slot.name)  # exported from 0
            now = time.time()
            try:
                self.store.write(
                    slot.name, slot.model, version=slot.version,
                    labels_learned=slot.labels_learned, quality=learner.quality(slot.name),
                    clock_ms=learner.clock, wall_time=now, feature_spec=self.feature_spec,
                    stream_digest=self.stream_digest,
                )
            except OSError as ex:
                log.warning("checkpoint of model %r failed: %s", slot.name, ex)
                failures.inc()
                continue
            metrics.CHECKPOINTS_WRITTEN.labels(model=slot.name).inc()
            metrics.CHECKPOINT_LABELS.labels(model=slot.name).set(slot.labels_learned)
            metrics.CHECKPOINT_VERSION.labels(model=slot.name).set(slot.version)
            metrics.CHECKPOINT_WRITTEN_AT.labels(model=slot.name).set(now)
        self.policy.done(learned)


class CheckpointPolicy:
    """When to write: every ``every_labels`` labels learned, or every ``every_s`` seconds of
    wall time (with at least one new label); either may be ``None``. Replays use labels only,
    so their checkpoints do not depend on the machine's speed."""

    def __init__(
        self,
        every_labels: int | None,
        every_s: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_labels is not None and every_labels <= 0:
            raise ValueError(f"every_labels must be > 0, got {every_labels}")
        if every_s is not None and every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.every_labels = every_labels
        self.every_s = every_s
        self.clock = clock
        self.last_labels = 0
        self.last_at = clock()

    def due(self, labels_learned: int) -> bool:
        if labels_learned <= self.last_labels:
            return False
        if self.every_labels is not None and labels_learned - self.last_labels >= self.every_labels:
            return True
        return self.every_s is not None and self.clock() - self.last_at >= self.every_s

    def done(self, labels_learned: int) -> None:
        self.last_labels = labels_learned
        self.last_at = self.clock()


def _seq(path: Path) -> int:
    """A checkpoint's write sequence number; -1 when its metadata cannot be read."""
    try:
        return int(json.loads((path / "meta.json").read_text()).get("seq", 0))
    except (OSError, ValueError, AttributeError):
        return -1


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"model name {name!r} cannot name a directory")
