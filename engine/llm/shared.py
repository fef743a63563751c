"""What every LLM client in a process shares, built once and early: TLS and the SDK's OS probe.

- The TLS context: loading the CA store takes ~50 ms; every client would otherwise build its
  own. Keyed by SSL_CERT_FILE / SSL_CERT_DIR, which the default context reads. Only an https
  server needs one.
- The SDK's platform probe (`X-Stainless-OS`): on a client's first request the SDK runs
  `platform.platform()` and reads /etc/os-release in a worker thread, once for every request
  already in flight, before the first request leaves. Probed here once per process, with the
  SDK's own function (~3 ms), and handed to each client as it is made.

`warm_up` builds the TLS context in a background thread from the run's preflight, so loading
the CA store overlaps the run's own start-up (records, scheduler, first prompts).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Any

import openai

__all__ = ["adopt_platform", "shared_ssl_context", "warm_up"]

_ssl_contexts: dict[tuple[str | None, str | None], Any] = {}
_ssl_lock = threading.Lock()
_platform: list[Any] = []  # the SDK's platform value, once probed
_platform_lock = threading.Lock()


def shared_ssl_context() -> Any:
    """The HTTP library's default TLS context, built once per process and shared by clients."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _ssl_lock:  # a warm_up() thread may be building it: wait for that one
        if key not in _ssl_contexts:
            http = next(
                c for c in openai.DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient"
            )  # httpx2 or httpx, whichever this SDK version is built on
            module = importlib.import_module(http.__module__.split(".")[0])
            _ssl_contexts[key] = module.create_ssl_context()
        return _ssl_contexts[key]


def _probe_platform() -> None:
    with _platform_lock:  # clients made in other threads probe once between them
        probe = getattr(importlib.import_module("openai._base_client"), "get_platform", None)
        if probe is not None and not _platform:
            _platform.append(probe())


def adopt_platform(client: Any) -> None:
    """Give an SDK client the probed platform (probing now if need be, ~3 ms once per process)
    while the SDK still has the slot it caches it in (`_platform`); otherwise the SDK probes
    for itself, as it always did."""
    if getattr(client, "_platform", "absent") is not None:
        return
    with contextlib.suppress(Exception):
        _probe_platform()
    if _platform:
        client._platform = _platform[0]


def warm_up(base_url: str) -> threading.Thread | None:
    """For an https server, build the TLS context in the background; the thread, or None.

    Plain http needs no TLS context. A failure is left for the client to meet (and raise).
    """
    if not base_url.lower().startswith("https:"):
        return None

    def build() -> None:
        with contextlib.suppress(Exception):
            shared_ssl_context()

    thread = threading.Thread(target=build, name="stepchain-tls", daemon=True)
    thread.start()
    return thread
