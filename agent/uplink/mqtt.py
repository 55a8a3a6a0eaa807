"""The one module on the device that talks MQTT (paho-mqtt).

Everything else hands it typed reports and receives raw command payloads; topics
come from :class:`agent.contract.Topics`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.contract import DeviceState, StatusReport, Topics
from agent.contract.broker_url import parse_broker_url
from agent.contract.messages import _Message

log = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE = 1


class MqttUplink:
    """A persistent-session MQTT client with a retained status and a Last Will.

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
        keepalive_s: int = 30,
        max_queued_messages: int = 10_000,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self._status_provider = status_provider
        self._on_command = on_command
        self._address = parse_broker_url(broker_url)
        self._keepalive_s = keepalive_s
        self.connected = threading.Event()
        # Persistent session: commands sent while we were away are delivered on reconnect.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ef-agent-{device_id}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if self._address.tls:
            # Mutual TLS: trust only the broker CA from enrollment, and prove who we are with our certificate.
            self._client.tls_set(ca_certs=tls_ca_file, certfile=tls_cert_file, keyfile=tls_key_file)
        offline = StatusReport(device_id=device_id, state=DeviceState.OFFLINE).to_bytes()
        self._client.will_set(topics.status(device_id), offline, qos=QOS_AT_LEAST_ONCE, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        # paho buffers in memory while disconnected; the bound keeps memory flat.
        self._client.max_queued_messages_set(max_queued_messages)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message

    def start(self) -> None:
        self._client.connect_async(self._address.host, self._address.port, keepalive=self._keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        if self.connected.is_set():
            offline = StatusReport(device_id=self.device_id, state=DeviceState.OFFLINE)
            self._client.publish(
                self.topics.status(self.device_id), offline.to_bytes(), qos=QOS_AT_LEAST_ONCE, retain=True
            ).wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, message: _Message, *, retain: bool = False) -> None:
        """Queue ``message`` at QoS 1; paho delivers it when the broker is reachable."""
        info = self._client.publish(topic, message.to_bytes(), qos=QOS_AT_LEAST_ONCE, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s not queued: %s", topic, mqtt.error_string(info.rc))

    def publish_status(self) -> None:
        self.publish(self.topics.status(self.device_id), self._status_provider(), retain=True)

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
        log.info("connected to broker %s:%d", self._address.host, self._address.port)
        client.subscribe(self.topics.commands(self.device_id), qos=QOS_AT_LEAST_ONCE)
        self.connected.set()
        self.publish_status()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        log.warning("disconnected from broker (%s); paho reconnects with backoff", reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # Never let a bad command kill paho's network thread.
        try:
            self._on_command(bytes(message.payload))
        except Exception:
            log.exception("command handler failed")
