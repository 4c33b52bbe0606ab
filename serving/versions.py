"""Model versions at run time: list them, activate one, and follow activations in every worker.

An activation loads and verifies the new bundle beside the one serving (a version that fails
verification is refused and the old one keeps serving), checks what created ensembles and
experiments it would leave without a model (409 unless forced, which pauses them), records the
activation in the store and swaps the holder's bundle in one assignment. Every other worker and
instance polls the newest activation about once a second on a daemon thread, loads the version
in the background and swaps the same way; the old bundle is freed when its last request ends.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

import store
from ensembles.bundle import EnsembleBundle, build_bundle
from experiments.spec import served_arms, shadow_arms
from models.onnx_bank import member_bank
from models.registry import list_versions, load_artifact
from models.versions import describe_all
from serving.engine import ExperimentEngine
from serving.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from serving.service import ModelHolder
from store.db import Store

log = logging.getLogger(__name__)

Loader = Callable[[str | None], EnsembleBundle]
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Experiment statuses whose arms still route traffic (the others serve their decided model).
_ROUTING = ("running", "paused")


def bundle_loader(root: Path, runtime: str, cache_dir: Path | None) -> Loader:
    """Load, verify, wire and warm one version (None: the newest) in the configured runtime."""

    def load(version: str | None) -> EnsembleBundle:
        artifact = load_artifact(version, root)
        bundle = build_bundle(artifact, bank=member_bank(artifact, runtime, cache_dir=cache_dir))
        bundle.warm_up()
        return bundle

    return load


@dataclass(frozen=True)
class Blocked:
    """A created ensemble or experiment a version cannot serve, and the models it lacks."""

    name: str
    kind: str  # "ensemble" or "experiment"
    status: str
    missing: tuple[str, ...]

    def describe(self) -> str:
        """``name (kind, missing a, b)`` for messages."""
        return f"{self.name} ({self.kind}, missing {', '.join(self.missing)})"


def blocked_by(
    bundle: EnsembleBundle, ensembles: Iterable[Any], experiments: Iterable[Any]
) -> list[Blocked]:
    """What ``bundle`` would leave without a model: created ensembles in creation order (one may
    use an earlier one), then experiments (their arms, or the decided model once ended)."""
    available = set(bundle.bank.names) | set(bundle.ensembles)
    found: list[Blocked] = []
    for row in sorted(ensembles, key=lambda r: (r.created_at, r.name)):
        used = [str(m.get("model_id")) for m in (row.definition or {}).get("models", [])]
        missing = tuple(m for m in used if m not in available)
        if missing:
            found.append(Blocked(row.name, "ensemble", row.status, missing))
        else:
            available.add(row.name)
    for row in experiments:
        if row.status in _ROUTING:
            used = [*served_arms(row.definition), *shadow_arms(row.definition)]
        else:
            used = [str((row.decision or {}).get("model") or row.control)]
        missing = tuple(dict.fromkeys(m for m in used if m not in available))
        if missing:
            found.append(Blocked(row.name, "experiment", row.status, missing))
    return found


class ModelVersions:
    """The version catalogue, activations, and this process's follower of them."""

    def __init__(
        self,
        models: ModelHolder,
        db: Store,
        engine: ExperimentEngine,
        loader: Loader,
        root: Path,
        *,
        pause: Callable[[str, str, str], None],
        resume: Callable[[str, str, str], None],
        interval: float = 1.0,
        background: bool = True,
    ) -> None:
        self.models = models
        self.db = db
        self.engine = engine
        self.loader = loader
        self.root = root
        self._pause = pause
        self._resume = resume
        self.interval = interval
        self.background = background
        self._lock = threading.Lock()  # one load at a time in this process
        self._start = threading.Lock()  # one follower thread per process
        self._seen: int | None = None  # the newest activation this process has acted on
        self._polled = 0.0
        self._thread_pid: int | None = None
        self._quiet_until = 0.0  # log a failing poll at most once a minute

    # -- reading ------------------------------------------------------------------------------
    def active(self) -> str | None:
        """The version this process serves now."""
        bundle = self.models.bundle
        return bundle.version if bundle is not None else None

    def catalogue(self) -> dict[str, Any]:
        """Every installed version's card (which one is active) and the activation history."""
        active = self.active()
        cards = [dict(card, active=card["version"] == active) for card in describe_all(self.root)]
        history = store.activations(self.db.sessions())
        return {
            "active": active,
            "versions": cards,
            "activations": [activation_json(row) for row in history],
        }

    # -- activating ---------------------------------------------------------------------------
    def activate(self, version: Any, actor: str, force: Any = False) -> dict[str, Any]:
        """Serve ``version`` in every worker; 404 unknown, 422 fails verification, 409 breaks
        created ensembles or experiments unless ``force`` (which pauses them)."""
        if not isinstance(force, bool):
            raise InvalidRequest('"force" must be true or false.', field="force")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise NotFound("No model version by that name. GET /api/v1/models lists them.")
        installed = list_versions(self.root)
        if version not in installed:
            raise NotFound(
                f"No model version {version!r}; installed: {', '.join(reversed(installed))}."
            )
        previous = self.active()
        with self._lock:
            current = self.models.bundle
            bundle = current if current is not None and current.version == version else None
            if bundle is None:
                bundle = self._load_or_refuse(version)
            session = self.db.sessions()
            try:
                ensembles, experiments = store.list_definitions(session)
            finally:
                session.rollback()
            blocked = blocked_by(bundle, ensembles, experiments)
            if blocked and not force:
                raise Conflict(
                    f"Version {version} lacks models that these use: "
                    + "; ".join(b.describe() for b in blocked)
                    + '. Send {"force": true} to activate it anyway and pause them.'
                )
            paused = self._pause_all(blocked, actor)
            resumed = self._resume_undone(blocked, ensembles, experiments, actor)
            row = store.record_activation(
                self.db.sessions(), version, previous, actor, paused=paused
            )
            self._swap(bundle, row.id)
        log.info("%s activated model version %s (was %s)", actor, version, previous)
        unservable = [b.name for b in blocked if b.name not in paused]
        return {
            "active": version,
            "previous": previous,
            "changed": previous != version,
            "paused": paused,
            "resumed": resumed,
            "unservable": unservable,
            "activation": activation_json(row),
        }

    def _load_or_refuse(self, version: str) -> EnsembleBundle:
        """The loaded bundle, or a 422 with the verification failure (the old one serves on)."""
        try:
            return self.loader(version)
        except Exception as exc:  # ArtifactError, ManifestError, OnnxBankError, anything broken
            log.exception("model version %s refused", version)
            raise Unprocessable(
                f"Version {version} failed verification and was not activated: "
                f"{type(exc).__name__}: {str(exc)[:300]}. The current version keeps serving."
            ) from None

    def _pause_all(self, blocked: list[Blocked], actor: str) -> list[str]:
        """Pause the blocked ensembles and routing experiments; ended ones cannot pause."""
        paused = []
        for item in blocked:
            if item.status == ("active" if item.kind == "ensemble" else "running"):
                self._pause(item.kind, item.name, actor)
                paused.append(item.name)
        return paused

    def _resume_undone(
        self, blocked: list[Blocked], ensembles: list[Any], experiments: list[Any], actor: str
    ) -> list[str]:
        """Resume what the activation being replaced paused, where the new version serves it
        again (``blocked``: what it cannot serve; the rows as read before this activation's
        pauses, which touched only blocked names)."""
        last = store.active_activation(self.db.sessions())
        if last is None or not last.paused:
            return []
        still = {b.name for b in blocked}
        rows: dict[str, tuple[str, str]] = {r.name: ("ensemble", r.status) for r in ensembles}
        rows.update({r.name: ("experiment", r.status) for r in experiments})
        resumed = []
        for name in last.paused:
            kind, status = rows.get(name, ("", ""))
            if kind and status == "paused" and name not in still:
                self._resume(kind, name, actor)
                resumed.append(name)
        return resumed

    def _swap(self, bundle: EnsembleBundle, activation_id: int | None) -> None:
        """Serve ``bundle`` from the next request on; the old one goes with its last request."""
        old = self.models.bundle
        self.models.bundle = bundle
        self.models.error = None
        self._seen = activation_id
        self.engine.invalidate()
        if old is not None and old is not bundle:
            log.info("now serving model version %s (was %s)", bundle.version, old.version)
            del old
            gc.collect()  # ONNX sessions and weights go now, not at some later collection

    # -- following ----------------------------------------------------------------------------
    def adopt(self, activation_id: int | None) -> None:
        """Mark the activation the process started on as already acted on."""
        self._seen = activation_id

    def follow(self) -> None:
        """Called before each request: start this process's follower (or poll inline)."""
        if not self.background:
            now = time.monotonic()
            if now - self._polled >= self.interval:
                self._polled = now
                self.poll()
            return
        pid = os.getpid()
        if self._thread_pid != pid:  # first request of this (forked) process
            with self._start:  # two first requests of a threaded server start one thread
                if self._thread_pid != pid:
                    self._thread_pid = pid
                    threading.Thread(target=self._loop, name="chorus-versions", daemon=True).start()

    def _loop(self) -> None:
        """Poll every ``interval`` for good: a failure other than the database's (which
        ``poll`` logs quietly) is logged at most once a minute, and the loop goes on."""
        while True:
            time.sleep(self.interval)
            try:
                self.poll()
            except Exception:
                now = time.monotonic()
                if now >= self._quiet_until:
                    self._quiet_until = now + 60
                    log.exception("model version follower: a poll failed (still following)")

    def poll(self) -> bool:
        """Serve the newest activation if it names another version; True when it swapped."""
        try:
            row = store.active_activation(self.db.sessions())
        except SQLAlchemyError as exc:
            now = time.monotonic()
            if now >= self._quiet_until:
                self._quiet_until = now + 60
                log.warning("cannot read the active model version (serving on): %s", exc)
            return False
        if row is None or row.id == self._seen:
            return False
        with self._lock:
            if row.id == self._seen:
                return False
            if self.active() == row.version:
                self._seen = row.id
                return False
            try:
                bundle = self.loader(row.version)
            except Exception:
                self._seen = row.id  # one failure per activation in the log, not one a second
                log.exception(
                    "activated model version %s failed to load here; still serving %s",
                    row.version,
                    self.active(),
                )
                return False
            self._swap(bundle, row.id)
        return True


def activation_json(row: Any) -> dict[str, Any]:
    """One activation as the API shows it."""
    return {
        "version": row.version,
        "previous": row.previous,
        "actor": row.actor,
        "at": row.at.isoformat() if row.at is not None else None,
        "paused": list(row.paused),
    }


def startup_version(db: Store, configured: str | None) -> tuple[str | None, int | None]:
    """The version to load at start: the newest activation, else ``MODEL_VERSION`` (None: the
    default); with the activation's id. A database that cannot be read falls back, logged."""
    try:
        row = store.active_activation(db.sessions())
    except SQLAlchemyError as exc:
        log.warning("cannot read the activated model version, loading the configured one: %s", exc)
        return configured, None
    finally:
        db.sessions.remove()
    if row is None:
        return configured, None
    return row.version, row.id


def status_changers(definitions: Any, db: Store) -> Mapping[str, Callable[[str, str, str], None]]:
    """``pause`` and ``resume`` callbacks over ensembles (the store) and experiments (the
    definition service, so revisions are checked and the engine's cache is dropped)."""

    def set_status(kind: str, name: str, actor: str, ensemble: str, experiment: str) -> None:
        if kind == "ensemble":
            store.update_ensemble_status(db.sessions(), name, ensemble, actor)
            definitions.engine.invalidate()
        else:
            definitions.patch(name, {"status": experiment}, actor)

    return {
        "pause": lambda kind, name, actor: set_status(kind, name, actor, "paused", "paused"),
        "resume": lambda kind, name, actor: set_status(kind, name, actor, "active", "running"),
    }
