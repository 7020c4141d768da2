"""One event loop on a thread of its own: the synchronous doors of the judge
(the CLI, ``Judge.score``) run the asynchronous pipeline there."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future


class LoopThread:
    def __init__(self, name: str = "spatialreward-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coro) -> Future:
        """Run ``coro`` on the loop; ``cancel()`` on the future cancels it there."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float | None = None):
        return self.submit(coro).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what still runs on the loop, then stop it and its thread."""
        if not self._thread.is_alive() or self.loop.is_closed():
            return
        if threading.current_thread() is self._thread:  # from the loop itself: no waiting on it
            self.loop.call_soon(self.loop.stop)
            return

        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(finish(), self.loop).result(timeout)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
