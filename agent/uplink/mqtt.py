"""The one module on the device that talks MQTT to the control plane (paho-mqtt).

Everything else hands it typed reports and receives raw command payloads; topics
come from :class:`agent.contract.Topics`.

* Reports go to the on-disk :class:`~agent.uplink.outbox.Outbox` first; a sender
  thread publishes them in order at QoS 1 while connected and forgets each only
  once the broker acknowledged it.
* Persistent session (``clean_session=False``) and a retained status with a Last
  Will ("offline").
* Our own network loop, so reconnects use jittered exponential backoff
  (:func:`~agent.uplink.backoff.jittered_backoff_s`) instead of paho's fixed one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.contract import DeviceState, StatusReport, Topics
from agent.contract.broker_url import parse_broker_url
from agent.contract.messages import _Message
from agent.contract.topics import device_client_id
from agent.uplink.backoff import jittered_backoff_s
from agent.uplink.outbox import Outbox

if TYPE_CHECKING:  # a runtime import would be circular: agent.infer -> capture -> uplink -> agent.infer
    from agent.infer.engine import FrameResult

log = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE = 1
# paho's default in-flight window for QoS>0 (docs/protocol.md): send in batches of that size.
MAX_INFLIGHT = 20


class MqttUplink:
    """A persistent-session MQTT client with a retained status, a Last Will and an on-disk outbox.

    ``status_provider`` is called on every (re)connect so the retained status always
    names the model that is really running.
    """

    def __init__(
        self,
        *,
        device_id: str,
        broker_url: str,
        topics: Topics,
        status_provider: Callable[[], StatusReport],
        on_command: Callable[[bytes], None],
        outbox: Outbox,
        keepalive_s: int = 30,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        ack_timeout_s: float = 10.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        password: str | None = None,
        resolve_broker_url: Callable[[], str | None] | None = None,
        resolve_after_failures: int = 3,
        on_broker_moved: Callable[[str], None] | None = None,
    ) -> None:
        self.device_id = device_id
        # Messages that arrived on another topic than our command topic: ignored, counted.
        self.ignored_messages = 0
        self.topics = topics
        self.outbox = outbox
        self._status_provider = status_provider
        self._on_command = on_command
        self.broker_url = broker_url
        self._address = parse_broker_url(broker_url)
        # Asked after this many failed connection attempts in a row: the broker may have moved.
        self._resolve_broker_url = resolve_broker_url
        self._resolve_after_failures = max(1, resolve_after_failures)
        self._on_broker_moved = on_broker_moved
        self._keepalive_s = keepalive_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._ack_timeout_s = ack_timeout_s
        self._rng = random.Random()
        self._attempt = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        # Persistent session: commands sent while we were away are delivered on reconnect.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_client_id(device_id),
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if self._address.tls:
            # Mutual TLS: trust only the broker CA from enrollment, and prove who we are with our certificate.
            self._client.tls_set(ca_certs=tls_ca_file, certfile=tls_cert_file, keyfile=tls_key_file)
        if self._address.username is not None:
            self._client.username_pw_set(self._address.username, self._address.password)
        elif password is not None:
            # Brokers that know devices by credentials (the embedded one): username = device id.
            self._client.username_pw_set(device_id, password)
        offline = StatusReport(device_id=device_id, state=DeviceState.OFFLINE).to_bytes()
        self._client.will_set(topics.status(device_id), offline, qos=QOS_AT_LEAST_ONCE, retain=True)
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._network = threading.Thread(target=self._network_loop, name="mqtt-network", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)

    def start(self) -> None:
        self._network.start()
        self._sender.start()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged). Returns whether it is."""
        done = threading.Event()
        deadline_s = timeout_s
        while len(self.outbox) and deadline_s > 0 and self.connected.is_set():
            self._wake_sender.set()
            done.wait(0.05)
            deadline_s -= 0.05
        return len(self.outbox) == 0

    def stop(self) -> None:
        if self.connected.is_set():
            offline = StatusReport(device_id=self.device_id, state=DeviceState.OFFLINE)
            info = self._client.publish(
                self.topics.status(self.device_id), offline.to_bytes(), qos=QOS_AT_LEAST_ONCE, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2)
            self._client.disconnect()
        self._stop.set()
        self._wake_sender.set()
        self._network.join(timeout=5)
        self._sender.join(timeout=5)

    def publish(self, topic: str, message: _Message, *, retain: bool = False) -> None:
        """Queue ``message`` durably; it is delivered at QoS 1, in order, when the broker is reachable."""
        self.outbox.append(topic, message.to_bytes(), retain=retain)
        self._wake_sender.set()

    def publish_status(self) -> None:
        """Publish the retained status now if connected (it is re-sent on every connect anyway)."""
        if self.connected.is_set():
            status = self._status_provider()
            self._client.publish(self.topics.status(self.device_id), status.to_bytes(), qos=QOS_AT_LEAST_ONCE,
                                 retain=True)

    # -- threads -------------------------------------------------------------
    def _network_loop(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(self._address.host, self._address.port, keepalive=self._keepalive_s)
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, mqtt.WebsocketConnectionError) as exc:
                self._wait_before_reconnect(f"cannot reach broker: {exc}")
                if self._attempt % self._resolve_after_failures == 0 and self._moved_broker():
                    first = True  # connect() to the new address; reconnect() would retry the old one
                continue
            while not self._stop.is_set():
                if self._client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                    break
            self.connected.clear()
            if not self._stop.is_set():
                self._wait_before_reconnect("connection lost")
        # Let paho flush the DISCONNECT we queued in stop().
        self._client.loop(timeout=0.2)

    def _moved_broker(self) -> bool:
        """Ask where the broker is now (the control plane's API); switch to it if it moved."""
        if self._resolve_broker_url is None or self._stop.is_set():
            return False
        try:
            url = self._resolve_broker_url()
        except Exception as exc:  # the API may be down too: keep trying the broker we know
            log.warning("could not ask the control plane for the broker URL: %s", exc)
            return False
        if not url or url == self.broker_url:
            return False
        try:
            address = parse_broker_url(url)
        except ValueError as exc:
            log.error("the control plane named an unusable broker URL %r: %s", url, exc)
            return False
        if address.tls != self._address.tls:
            log.error("the control plane moved the broker to %s, which changes TLS; re-enroll this device", url)
            return False
        log.warning("the broker moved from %s to %s; connecting there", self.broker_url, url)
        self.broker_url, self._address = url, address
        if self._on_broker_moved is not None:
            try:
                self._on_broker_moved(url)
            except Exception:  # remembering it is a convenience; connecting matters more
                log.exception("could not remember the new broker URL")
        return True

    def _wait_before_reconnect(self, why: str) -> None:
        delay_s = jittered_backoff_s(self._attempt, min_s=self._reconnect_min_s, max_s=self._reconnect_max_s,
                                     rng=self._rng)
        self._attempt += 1
        log.warning("%s; reconnecting in %.2fs (%d reports buffered)", why, delay_s, len(self.outbox))
        self._stop.wait(delay_s)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if not self.connected.is_set():
                self.connected.wait(0.5)
                continue
            batch = self.outbox.peek(MAX_INFLIGHT)
            if not batch:
                self._wake_sender.wait(0.5)
                self._wake_sender.clear()
                continue
            acknowledged: int | None = None
            infos = [(report_id, self._client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE, retain=retain))
                     for report_id, topic, payload, retain in batch]
            for report_id, info in infos:
                try:
                    info.wait_for_publish(timeout=self._ack_timeout_s)
                except (RuntimeError, ValueError):
                    break
                if not info.is_published():
                    break
                acknowledged = report_id
            if acknowledged is not None:
                # Only the acknowledged prefix is forgotten; the rest is sent again (ingest
                # is idempotent on message_id, so a duplicate costs nothing).
                self.outbox.remove_through(acknowledged)
            else:
                self._stop.wait(0.2)

    # -- paho callbacks ------------------------------------------------------
    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        log.info("connected to broker %s:%d (session present: %s)", self._address.host, self._address.port,
                 flags.session_present)
        self._attempt = 0
        client.subscribe(self.topics.commands(self.device_id), qos=QOS_AT_LEAST_ONCE)
        self.connected.set()
        self.publish_status()
        self._wake_sender.set()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        log.warning("disconnected from broker (%s)", reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.topics.commands(self.device_id):
            # Not ours to act on (a broker delivering retained messages of other topics): never a command.
            self.ignored_messages += 1
            log.debug("ignored a message on %s: not this device's command topic", message.topic)
            return
        # Never let a bad command kill the network thread.
        try:
            self._on_command(bytes(message.payload))
        except Exception:
            log.exception("command handler failed")


class MqttResultsSink:
    """Per-frame results to ``<topic>/<pipeline>`` on a local broker, for consumers on the
    device or its LAN. QoS 0: results are a live feed, not records; a dead local broker
    costs nothing (paho drops what it cannot send)."""

    def __init__(self, broker_url: str, topic: str, *, client_id: str) -> None:
        self.topic = topic
        address = parse_broker_url(broker_url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                                   protocol=mqtt.MQTTv311)
        self._client.connect_async(address.host, address.port, keepalive=30)
        self._client.loop_start()

    def emit(self, result: FrameResult) -> None:
        self._client.publish(f"{self.topic}/{result.pipeline}",
                             json.dumps(result.to_json_dict(), separators=(",", ":")), qos=0)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
