"""The store names what is served: the production pointer and ``state/serving`` follow the live ``/metadata``.

A pack, deploy or verify that fails puts the production pointer back on the version the live ``/metadata``
reports (only if the pointer still names the failed version: a promotion made meanwhile is left alone). A
verified deploy records ``state/serving.json`` (version, mode, ``/metadata`` URL), which ``dkt models
list`` reads to mark the version serving now.
"""

from __future__ import annotations

import contextlib

import requests

from dkt.settings import PipelineSettings, SwarmSettings, load
from pipeline.deploy_local import current_url
from pipeline.store import PointerMoved, VersionedStore

SERVING_STATE = "serving"


def metadata_url() -> str:
    """Where the live service of this deploy mode reports its model version."""
    if load(PipelineSettings).deploy_mode == "swarm":
        return str(load(SwarmSettings).metadata_url)
    return current_url() + "/metadata"


def served_now(url: str, timeout: float = 5.0) -> str | None:
    """The model version ``url`` (a ``/metadata`` endpoint) reports, or None when nothing answers it."""
    try:
        r = requests.get(url, timeout=timeout)
        v = r.json().get("model_version") if r.ok else None
    except (requests.RequestException, ValueError, AttributeError):
        return None
    return str(v) if v is not None else None


def record_serving(store: VersionedStore, version: str, url: str) -> None:
    mode = load(PipelineSettings).deploy_mode
    store.put_state(SERVING_STATE, {"model_version": version, "mode": mode, "metadata_url": url})


def production_back_on_served(store: VersionedStore, failed: str, why: str) -> str:
    """After a failed pack/deploy/verify: point production at what is really served. Returns what happened."""
    url = metadata_url()
    served = served_now(url)
    if served is None:
        return f"nothing answers {url}; production still names {failed}"
    if served == failed:
        record_serving(store, served, url)
        return f"{url} serves {failed}; production stays on it"
    if not store.exists("models", served):
        return f"{url} serves {served}, which is not a stored version; production still names {failed}"
    try:
        store.set_pointer("models", "production", served, reason=f"deploy of {failed} failed: {why}", only_if=failed)
    except PointerMoved:
        return f"production was moved meanwhile (not by this run); left where it is, {url} serves {served}"
    record_serving(store, served, url)
    return f"production pointer back on {served}, what {url} serves"


def production_on_verified(store: VersionedStore, version: str, url: str) -> str:
    """After a verified deploy: record it; if an earlier failed try of it reset production, move production back."""
    record_serving(store, version, url)
    ptr = store.pointer("models", "production") or {}
    if ptr.get("version") == version:
        return version
    last = (ptr.get("log") or [{}])[-1]
    if last.get("from") == version and str(last.get("reason", "")).startswith(f"deploy of {version} failed"):
        with contextlib.suppress(PointerMoved):
            store.set_pointer("models", "production", version, reason=f"deploy of {version} verified on retry",
                              only_if=ptr.get("version"))  # fmt: skip
            return version
    return str(ptr.get("version"))
