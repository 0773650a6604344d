"""The model swap: a running service takes a new production bundle without a restart (docs/serving.md#model-swap).

``DKT_SERVED_MODEL_FILE`` names a small JSON file (``dkt deploy`` with ``DKT_DEPLOY_STRATEGY=swap`` writes it
atomically: a temp file renamed over it)::

    {"bundle": "/abs/bundle/dir", "model_version": "v7", "shadow": {"bundle": "...", "model_version": "v6"} | null}

Each worker checks the file's stat once a second on a background task (``Swapper.watch``). When it changed, the
worker loads the named bundle (and shadow) beside the one it serves, in a thread (requests keep being answered),
and replaces one reference (``Swapper.served``). A request takes that reference once, when it starts, and uses it
to the end: a request in flight when the swap happens finishes on the old model, and batches never mix models
(the batchers group their jobs by the ``Served`` they carry). Everything keyed to a model lives in its ``Served``
and goes with it: the predictor, the tag, the training config, the shadow and the per-student state cache (a new
model starts with an empty one; the old one is freed when its last request ends).

A bundle that does not load (or whose version is not the one the file names) is refused: the old model keeps
serving, the failure is logged, counted in the ``dkt_model_swap_failures_total`` Prometheus counter and shown in
``/metadata`` (``swap.failed``), where the deploy step's verify reads it and fails at once. No new network
surface: the file is on the server's own disk, written by whoever may deploy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkt.predictor import Predictor, load_predictor
from dkt.training import resolve_device
from serving.settings import settings
from serving.shadow import Shadow
from serving.state_cache import StateCache

log = logging.getLogger("bentoml.dkt_service.swap")
CHECK_SECONDS = 1.0  # how often a worker stats the file: a deploy waits at most this long for the pick-up


class SwapError(ValueError):
    """The served-model file or the bundle it names cannot be served; the message says which and why."""


@dataclass(frozen=True)
class Served:
    """One model as the service serves it, with everything keyed to it: swapped as one reference."""

    predictor: Predictor
    tag: str  # the BentoML model tag, or ``bundle:<dir>`` for a bundle the served-model file named
    config: dict[str, Any] | None
    shadow: Shadow | None
    states: StateCache | None


def served_from(model_dir: Path, tag: str, shadow: Shadow | None, predictor: Predictor | None = None) -> Served:
    """The bundle in ``model_dir`` (its config, a fresh state cache) as the service serves it; ``predictor`` when
    the caller loaded it already (the swap checks its version first), else loaded here."""
    predictor = predictor or load_predictor(model_dir, device=str(resolve_device(settings.device)))
    config_file = model_dir / "config.json"  # every bundle carries the config it was trained with
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    # Per-student model states for requests that carry student_id (serving/state_cache.py); 0 bytes: none.
    states = StateCache(settings.state_cache_bytes) if settings.state_cache_bytes > 0 else None
    return Served(predictor, tag, config, shadow, states)


def read_served_file(path: Path) -> dict[str, Any]:
    """The served-model file's document, checked: ``bundle`` a folder, ``model_version`` a string, ``shadow``
    null or the same two keys. SwapError naming the file and the field otherwise."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SwapError(f"{path}: cannot read the served-model file: {exc}") from None
    for part, where in ((doc, ""), (doc.get("shadow") if isinstance(doc, dict) else None, "shadow.")):
        if part is None and where:
            continue
        if not isinstance(part, dict) or not isinstance(part.get("bundle"), str) or not part.get("model_version"):
            raise SwapError(f"{path}: {where or 'the file'} needs 'bundle' (a folder) and 'model_version'")
    return doc


def load_named(doc: dict[str, Any]) -> Served:
    """The bundle (and shadow) ``doc`` names, loaded; SwapError when one does not load or is another version."""

    def predictor_of(part: dict[str, Any]) -> tuple[Path, Predictor]:
        folder = Path(part["bundle"])
        try:
            predictor = load_predictor(folder, device=str(resolve_device(settings.device)))
        except Exception as exc:  # a bundle is untrusted input here: whatever it raises, the old model stays
            raise SwapError(f"{folder}: does not load: {type(exc).__name__}: {exc}") from exc
        if str(predictor.model_version) != str(part["model_version"]):
            raise SwapError(f"{folder}: holds model_version {predictor.model_version}, not {part['model_version']}")
        return folder, predictor

    shadow = None
    if doc.get("shadow"):
        folder, predictor = predictor_of(doc["shadow"])
        shadow = Shadow(predictor, f"bundle:{folder}")
    folder, predictor = predictor_of(doc)
    return served_from(folder, f"bundle:{folder}", shadow, predictor)


def failure_counter() -> Callable[[], None]:
    """``inc()`` of ``dkt_model_swap_failures_total``, made in the worker process (as ``batch_size_histogram``)."""
    import bentoml

    counter = bentoml.metrics.Counter(
        name="dkt_model_swap_failures",
        documentation="bundles the served-model file named that did not load (the old model kept serving)",
    )
    return counter.inc


def swapper_for(model_path: Path, model_tag: str) -> Swapper:
    """A worker's swapper: what ``DKT_SERVED_MODEL_FILE`` names, else the model ``model_tag`` (in the BentoML store
    at ``model_path``) with the ``DKT_SHADOW_MODEL_TAG`` shadow, which loads now or the worker does not start."""

    def from_tag() -> Served:
        shadow = Shadow.load(settings.shadow_model_tag) if settings.shadow_model_tag else None
        return served_from(model_path, model_tag, shadow)

    return Swapper(settings.served_model_file, failure_counter()).begin(from_tag)


class Swapper:
    """Holds the served model; ``watch`` swaps in what the served-model file names when it changes."""

    def __init__(self, path: Path | None, on_failure: Callable[[], None] | None = None) -> None:
        self.path = path
        self.on_failure = on_failure
        self._served: Served | None = None
        self.fallback: Callable[[], Served] | None = None
        self.seen: tuple[int, int, int] | None = None  # the file's (inode, size, mtime) last looked at
        self.swaps = 0
        self.swapped_at: float | None = None
        self.failed: dict[str, Any] | None = None  # the last refused bundle, until one loads

    @property
    def served(self) -> Served:
        """What a request starting now is served by (take it once per request)."""
        assert self._served is not None, "Swapper.begin() loads the first model"
        return self._served

    def begin(self, fallback: Callable[[], Served]) -> Swapper:
        """At worker start: the model the file names when there is one that loads (a restarted server comes back
        on what was swapped in), else ``fallback()`` (DKT_MODEL_TAG's), with a refused file reported."""
        self.fallback = fallback
        if self.path is not None and self.path.is_file():
            self.check(initial=True)
        if self._served is None:
            self._served = fallback()
        return self

    def check(self, initial: bool = False) -> bool:
        """Stat the file; when it changed, load what it names and swap. True when a new model was swapped in."""
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:  # no file: nothing to swap to; a file removed: back on the model the worker started with
            if self.seen is None or self.fallback is None:
                return False
            self.seen = None
            return self._swap(self.fallback())
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self.seen:
            return False
        self.seen = key
        try:
            doc = read_served_file(self.path)
            if self._served is not None and _names(doc, self._served):
                return False  # rewritten with what is served already (a redeploy of the same version)
            served = load_named(doc)
        except SwapError as exc:
            self.failed = {"error": str(exc), "at": time.time(), "file": str(self.path)}
            self.failed["model_version"] = _version_in(self.path)
            log.error("model swap refused, %s keeps serving: %s", self._version(), exc)
            if self.on_failure is not None:
                self.on_failure()
            return False
        return self._swap(served, initial)

    def _swap(self, served: Served, initial: bool = False) -> bool:
        old = self._version()
        self._served = served  # the swap: one reference; requests that took the old one finish on it
        self.failed = None
        if not initial:
            self.swaps += 1
            self.swapped_at = time.time()
            log.info("model swapped: %s -> %s (%s)", old, served.predictor.model_version, served.tag)
        return True

    def _version(self) -> str | None:
        return None if self._served is None else str(self._served.predictor.model_version)

    def watch_in_background(self) -> asyncio.Task[None] | None:
        """From a worker's start-up hook: the watch as a task of its event loop (None without a served-model file).
        Keep the task: the loop holds only a weak reference to it."""
        return asyncio.get_running_loop().create_task(self.watch()) if self.path is not None else None

    async def watch(self) -> None:
        """The worker's background task: check the file every ``CHECK_SECONDS``, the load in a thread."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the watch must outlive any one bad check
                log.exception("checking %s failed", self.path)

    def describe(self) -> dict[str, Any]:
        """The swap's part of ``/metadata``."""
        return {"file": str(self.path), "swaps": self.swaps, "swapped_at": self.swapped_at, "failed": self.failed}


def _names(doc: dict[str, Any], served: Served) -> bool:
    """Whether ``doc`` names exactly what ``served`` is (bundle folder, version and shadow)."""
    shadow = doc.get("shadow")
    want_shadow = f"bundle:{shadow['bundle']}" if shadow else None
    same = served.tag == f"bundle:{doc['bundle']}" and str(served.predictor.model_version) == str(doc["model_version"])
    return same and (served.shadow.tag if served.shadow else None) == want_shadow


def _version_in(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text()).get("model_version"))
    except (OSError, ValueError, AttributeError):
        return None
