"""Blocking work off the event loop, in daemon threads.

Not the loop's default thread pool: that pool holds only min(32, CPUs + 4) threads (6 on a
2-core machine), which would cap `--max-concurrent` for sync tools, and both asyncio.run and the
interpreter wait for its threads at exit, so Ctrl-C during a long sync tool would hang until the
tool returned. A daemon thread per call costs tens of microseconds and never blocks exit; a
cancelled call's thread finishes in the background and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any


async def run_in_thread(func: Callable[..., Any], /, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def work() -> None:
        try:
            result = context.run(func, **kwargs)
        except BaseException as exc:  # delivered to the awaiting task, not raised here
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(
        target=work, name=f"stepchain:{getattr(func, '__name__', 'call')}", daemon=True
    ).start()
    return await future
