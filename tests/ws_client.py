"""A websocket client for tests of the dashboard: tornado's, on an event
loop of its own, used synchronously."""

from __future__ import annotations

import asyncio
import json
import time

from metropc.dashboard import display


class WsClient:
    """A websocket client on its own event loop, used synchronously."""

    def __init__(self, url):
        from tornado.websocket import websocket_connect

        async def connect():
            return await websocket_connect(url)

        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncio.wait_for(connect(), 10))

    def recv(self, timeout=10.0):
        async def read():
            return await self.conn.read_message()

        msg = self.loop.run_until_complete(asyncio.wait_for(read(), timeout))
        if msg is None:
            raise ConnectionError("websocket closed")
        if isinstance(msg, bytes):
            return display.unpack_frame(msg)
        return json.loads(msg), None

    def send(self, obj):
        self.send_raw(json.dumps(obj))

    def send_raw(self, message, binary=False):
        """Send `message` as it is (text, or bytes with `binary`)."""
        async def write():
            await self.conn.write_message(message, binary=binary)

        self.loop.run_until_complete(write())

    def until(self, predicate, timeout=20.0, ack=True):
        """Receive (acknowledging) until predicate(header, arrays) holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("expected message not received in time")
            header, arrays = self.recv(left)
            if ack:
                self.send({"op": "ack", "n": 1})
            if predicate(header, arrays):
                return header, arrays

    def close(self):
        self.conn.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
