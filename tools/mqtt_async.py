"""A small asyncio MQTT 3.1.1 client: enough protocol for thousands of simulated devices.

Why not paho: one paho client per device costs a thread (``loop_start``) or a
hand-written socket pump, and paho's per-message overhead would make the
simulator, not the control plane, the bottleneck of a 5,000-device benchmark.
This client multiplexes any number of sessions on one event loop and speaks the
real protocol to the real broker:

* CONNECT with client id, clean-session flag, keep-alive and a Last Will;
* PUBLISH at QoS 0/1 with a bounded in-flight window; unacknowledged QoS 1
  messages are re-sent with DUP=1 after a reconnect (MQTT 3.1.1 section 4.4);
* messages published while disconnected wait in a bounded, ordered buffer (the
  oldest is dropped and counted when it is full, as the agent's disk buffer does);
* SUBSCRIBE (re-sent on every connect), incoming PUBLISH QoS 0/1 with PUBACK;
* PINGREQ keep-alive, and a dead connection detected when nothing arrives for
  1.5 keep-alive periods;
* ``abort()`` drops TCP without DISCONNECT so the broker fires the Last Will.

Everything runs on one event loop thread; no method is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["MqttClient", "MqttProtocolError", "Will"]

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14


class MqttProtocolError(ConnectionError):
    """The broker refused us or sent something this client does not understand."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _remaining_length(len(body)) + body


def encode_publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool) -> bytes:
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return _packet(first, body)


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    on_ack: Callable[[], None] | None


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        buffer = self.buffer
        offset = 0
        while True:
            # Fixed header: one type byte, then a 1-4 byte remaining length.
            if len(buffer) - offset < 2:
                break
            multiplier, length, index = 1, 0, offset + 1
            complete = False
            while index < len(buffer) and index - offset <= 4:
                byte = buffer[index]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not byte & 0x80:
                    complete = True
                    break
            if not complete or len(buffer) - index < length:
                break
            first = buffer[offset]
            body = bytes(buffer[index : index + length])
            offset = index + length
            try:
                self.client._on_packet(first, body)
            except Exception:  # a bug in a callback must not desynchronise the stream
                log.exception("%s: packet handler failed", self.client.client_id)
        if offset:
            del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_connection_lost(self)


class MqttClient:
    """One MQTT session (one device), reconnecting by itself while ``run()`` is active.

    ``on_message(topic, payload)`` is called for every incoming PUBLISH; the PUBACK
    is sent after it returns. ``on_connect(session_present)`` after every CONNACK.
    """

    def __init__(
        self,
        client_id: str,
        *,
        host: str,
        port: int,
        clean_session: bool = False,
        keepalive_s: int = 60,
        will: Will | None = None,
        max_inflight: int = 20,
        max_buffered: int = 10_000,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.host, self.port = host, port
        self.clean_session = clean_session
        self.keepalive_s = keepalive_s
        self.will = will
        self.max_inflight = max_inflight
        self.max_buffered = max_buffered
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.subscriptions: dict[str, int] = {}
        self.connected = False
        # Counters, read by the simulator.
        self.dropped = 0
        self.resent = 0
        self.connects = 0
        self._pending: deque[_Outgoing] = deque()
        self._inflight: OrderedDict[int, _Outgoing] = OrderedDict()
        self._next_id = 0
        self._protocol: _Protocol | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._last_rx = self._last_tx = 0.0
        self._want_connected = True
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._keepalive_task: asyncio.Task[None] | None = None

    # -- public --------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self._pending) + len(self._inflight)

    def start(self) -> None:
        """Connect now and keep reconnecting until :meth:`stop`."""
        self._want_connected = True
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"mqtt-{self.client_id}")
        self._wake.set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                on_ack: Callable[[], None] | None = None) -> None:
        """Queue a message; QoS 1 messages survive disconnects (bounded, oldest dropped first)."""
        if qos == 0:
            if self.connected:
                self._write(encode_publish(topic, payload, 0, retain, 0, False))
            return
        self._pending.append(_Outgoing(topic, payload, qos, retain, on_ack))
        if len(self._pending) > self.max_buffered:
            self._pending.popleft()
            self.dropped += 1
        self._drain()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscriptions[topic] = qos
        if self.connected:
            self._send_subscribe()

    async def disconnect(self) -> None:
        """Graceful: send DISCONNECT (no Last Will) and stay offline until :meth:`start`."""
        self._want_connected = False
        if self.connected:
            self._write(_packet(DISCONNECT << 4, b""))
        self._close()
        await self._stopped()

    async def abort(self, *, stay_offline: bool = True) -> None:
        """Drop TCP without DISCONNECT, as a crash or a network cut would: the Last Will fires."""
        if stay_offline:
            self._want_connected = False
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abort()
        if stay_offline:
            await self._stopped()

    async def stop(self) -> None:
        await self.disconnect()

    # -- internals -------------------------------------------------------------
    async def _stopped(self) -> None:
        runner = self._runner
        if runner is not None and not runner.done():
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(runner), timeout=5)
            except TimeoutError:
                runner.cancel()

    def _close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    async def _run(self) -> None:
        delay = self.reconnect_min_s
        loop = asyncio.get_running_loop()
        while self._want_connected:
            try:
                await self._connect_once(loop)
                delay = self.reconnect_min_s
                await self._lost.wait()
            except (OSError, MqttProtocolError, TimeoutError) as exc:
                log.debug("%s: connect failed: %s", self.client_id, exc)
                self._close()
            except Exception:  # a bug in a callback: log it, keep the session alive
                log.exception("%s: connection attempt failed", self.client_id)
                self._close()
            if not self._want_connected:
                break
            # Jitter keeps thousands of devices from reconnecting in lock step after a broker restart.
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_s)

    async def _connect_once(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lost = asyncio.Event()
        self._connack = loop.create_future()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self), self.host, self.port), timeout=10
        )
        self._protocol = protocol
        self._write(self._connect_packet())
        session_present = await asyncio.wait_for(self._connack, timeout=10)
        self.connected = True
        self.connects += 1
        self._last_rx = time.monotonic()
        if self.subscriptions:
            self._send_subscribe()
        # MQTT 3.1.1 4.4: re-send every unacknowledged PUBLISH, in order, with DUP set.
        for packet_id, message in self._inflight.items():
            self.resent += 1
            self._write(encode_publish(message.topic, message.payload, message.qos, message.retain, packet_id, True))
        if self.on_connect is not None:
            self.on_connect(session_present)
        self._drain()
        self._keepalive_task = loop.create_task(self._keepalive(protocol))

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self.clean_session else 0
        payload = _string(self.client_id)
        if self.will is not None:
            flags |= 0x04 | (self.will.qos << 3) | (0x20 if self.will.retain else 0)
            payload += _string(self.will.topic) + _string(self.will.payload)
        header = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", self.keepalive_s)
        return _packet(CONNECT << 4, header + payload)

    async def _keepalive(self, protocol: _Protocol) -> None:
        interval = max(self.keepalive_s / 2, 0.5)
        while self._protocol is protocol and self.connected:
            await asyncio.sleep(interval)
            if self._protocol is not protocol or not self.connected:
                return
            now = time.monotonic()
            if now - self._last_rx > self.keepalive_s * 1.5:
                log.debug("%s: broker silent for %.0fs; dropping connection", self.client_id, now - self._last_rx)
                if protocol.transport is not None:
                    protocol.transport.abort()
                return
            if now - self._last_tx > interval:
                self._write(_packet(PINGREQ << 4, b""))

    def _send_subscribe(self) -> None:
        body = struct.pack("!H", self._new_packet_id())
        for topic, qos in self.subscriptions.items():
            body += _string(topic) + bytes((qos,))
        self._write(_packet((SUBSCRIBE << 4) | 0x02, body))

    def _new_packet_id(self) -> int:
        for _ in range(65_535):
            self._next_id = self._next_id % 65_535 + 1
            if self._next_id not in self._inflight:
                return self._next_id
        raise MqttProtocolError("no free packet id")

    def _write(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.write(data)
            self._last_tx = time.monotonic()

    def _drain(self) -> None:
        while self.connected and self._pending and len(self._inflight) < self.max_inflight:
            message = self._pending.popleft()
            packet_id = self._new_packet_id()
            self._inflight[packet_id] = message
            self._write(encode_publish(message.topic, message.payload, message.qos, message.retain, packet_id, False))

    def _on_packet(self, first: int, body: bytes) -> None:
        self._last_rx = time.monotonic()
        kind = first >> 4
        if kind == PUBACK:
            (packet_id,) = struct.unpack_from("!H", body)
            message = self._inflight.pop(packet_id, None)
            if message is not None and message.on_ack is not None:
                message.on_ack()
            self._drain()
        elif kind == PUBLISH:
            qos = (first >> 1) & 0x03
            (topic_length,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + topic_length].decode(errors="replace")
            offset = 2 + topic_length
            packet_id = 0
            if qos:
                (packet_id,) = struct.unpack_from("!H", body, offset)
                offset += 2
            if self.on_message is not None:
                self.on_message(topic, body[offset:])
            if qos == 1:
                self._write(_packet(PUBACK << 4, struct.pack("!H", packet_id)))
            elif qos == 2:  # we never subscribe at QoS 2; refuse rather than half-implement it
                raise MqttProtocolError("QoS 2 is not supported by the simulator")
        elif kind == CONNACK:
            session_present, return_code = body[0] & 0x01, body[1]
            if self._connack is not None and not self._connack.done():
                if return_code:
                    self._connack.set_exception(MqttProtocolError(f"broker refused CONNECT: code {return_code}"))
                else:
                    self._connack.set_result(bool(session_present))
        # SUBACK and PINGRESP need no action beyond refreshing _last_rx.

    def _on_connection_lost(self, protocol: _Protocol) -> None:
        if protocol is not self._protocol:
            return
        was_connected = self.connected
        self.connected = False
        self._protocol = None
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionResetError("connection closed before CONNACK"))
        self._lost.set()
        if was_connected and self.on_disconnect is not None:
            self.on_disconnect()
