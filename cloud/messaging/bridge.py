"""The one module in the control plane that talks MQTT.

Subscribes to every device report (handing each to :class:`cloud.messaging.ingest.ReportIngest`)
and publishes commands. Other modules exchange typed messages with it.

For scale-out and no loss (docs/scaling.md):

* ``on_report_acked``: manual acknowledgements. Each QoS 1 report is handed over with an
  ``ack`` callback that ingest calls only after the report is committed, so the broker
  redelivers whatever a crashed node had not stored.
* ``session_id``: a stable client id per ingest node makes the session persistent
  (reports sent while the node is down wait in the broker); without it the session is
  clean, so a replaced node never leaves an orphan session collecting messages.
* ``shared_group``: subscribe with ``$share/<group>/...`` so several nodes split the traffic.
* ``protocol="5"``: MQTT 5 lets us raise the broker's in-flight window to this client
  (Receive Maximum); with 3.1.1 Mosquitto's ``max_inflight_messages`` (20) applies.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.contract import CameraConfigCommand, DeployCommand, ResyncCommand, Topics
from agent.contract.broker_url import parse_broker_url

log = logging.getLogger(__name__)


class _BufferedReadClient(mqtt.Client):
    """paho's client with reads of 64 KiB instead of a few bytes.

    paho reads each packet with three or more ``recv`` calls (the command byte, the
    length bytes, the rest), and each call releases and retakes the GIL. In an ingest
    node whose writer thread is busy parsing reports, every retake waits up to the
    interpreter's switch interval, so the network thread falls behind and the socket
    fills. Mosquitto 2.0 then drops QoS 1 messages for this client once more than
    ``max_queued_messages`` wait to be written to it, however large our Receive Maximum,
    after it acknowledged them to the devices (tests/scale/test_bridge_reads.py: 5,707 of
    20,000 arrived with paho's stock reads). One read per 64 KiB, and every complete
    packet in the buffer handled before returning to ``select``, keeps the socket drained.
    """

    _READ_CHUNK = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._read_buffer = bytearray()
        super().__init__(*args, **kwargs)

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._read_buffer:
            chunk = super()._sock_recv(self._READ_CHUNK)  # BlockingIOError when nothing is waiting
            if len(chunk) <= bufsize:
                return chunk
            self._read_buffer += chunk
        data = bytes(self._read_buffer[:bufsize])
        del self._read_buffer[:bufsize]  # O(1) at the front of a bytearray
        return data

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        result = super().loop_read(max_packets)
        # select() only reports the socket: packets already in the buffer are handled now.
        while result == MQTTErrorCode.MQTT_ERR_SUCCESS and self._read_buffer and self._sock is not None:
            result = super().loop_read(max_packets)
        return result

    def _sock_close(self) -> None:
        self._read_buffer.clear()  # a partial packet from the old connection must not prefix the new one
        super()._sock_close()


class CloudMqtt:
    def __init__(
        self,
        broker_url: str,
        topics: Topics,
        on_report: Callable[[str, bytes], object],
        *,
        client_id: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        sign: Callable[[DeployCommand], DeployCommand] | None = None,
        on_report_acked: Callable[[str, bytes, Callable[[], None], int], None] | None = None,
        session_id: str | None = None,
        shared_group: str | None = None,
        protocol: str = "3.1.1",
        receive_maximum: int = 1000,
        session_expiry_s: int = 7 * 86_400,
        subscribe_reports: bool = True,
    ) -> None:
        self.topics = topics
        self._on_report = on_report
        self._on_report_acked = on_report_acked
        self._shared_group = shared_group
        self._subscribe_reports = subscribe_reports
        self._persistent = session_id is not None
        self._v5 = protocol == "5"
        self._connect_properties: Properties | None = None
        if self._v5:
            self._connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            self._connect_properties.ReceiveMaximum = receive_maximum
            self._connect_properties.SessionExpiryInterval = session_expiry_s if self._persistent else 0
        # Every command leaves signed by the director key, whichever module built it.
        self._sign = sign
        self._address = parse_broker_url(broker_url)
        self.connected = threading.Event()
        self._client = _BufferedReadClient(
            CallbackAPIVersion.VERSION2,
            client_id=session_id or client_id or f"ef-cloud-{uuid.uuid4().hex[:8]}",
            clean_session=None if self._v5 else not self._persistent,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
        )
        if on_report_acked is not None:
            self._client.manual_ack_set(True)
        if self._address.tls:
            # Mutual TLS when given a certificate: the broker ACL knows the control plane by its CN.
            self._client.tls_set(ca_certs=tls_ca_file, certfile=tls_cert_file, keyfile=tls_key_file)
        if self._address.username is not None:
            self._client.username_pw_set(self._address.username, self._address.password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # Ingest is the bottleneck, not the socket: let QoS 1 flow.
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message

    def start(self, timeout_s: float = 10.0) -> None:
        if self._v5:
            self._client.connect_async(self._address.host, self._address.port, keepalive=30,
                                       clean_start=not self._persistent, properties=self._connect_properties)
        else:
            self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()
        if not self.connected.wait(timeout_s):
            self._client.loop_stop()
            raise ConnectionError(f"could not reach MQTT broker at {self._address.host}:{self._address.port}")

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def publish_command(self, command: DeployCommand | ResyncCommand | CameraConfigCommand) -> None:
        """Publish a command to its device at QoS 1. Deploy commands are signed here if they
        are not yet; a resync or camera set must come signed (its caller signs it with the director key)."""
        if isinstance(command, DeployCommand) and command.signature is None and self._sign is not None:
            command = self._sign(command)
        if command.signature is None and self._sign is not None:
            raise ValueError(f"command {command.job_id} ({command.kind}) must be signed before it is published")
        self._client.publish(self.topics.commands(command.device_id), command.to_bytes(), qos=1)

    def _handle_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                        reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("broker refused the control plane: %s", reason_code)
            return
        prefix = f"$share/{self._shared_group}/" if self._shared_group else ""
        if self._subscribe_reports:  # False on an API-only node: it publishes commands only
            client.subscribe([(prefix + topic, 1) for topic in self.topics.all_reports()])
        self.connected.set()
        log.info("control plane subscribed to reports under %s", self.topics.prefix)

    def _handle_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                           reason_code: ReasonCode, properties: Properties | None) -> None:
        self.connected.clear()
        if not getattr(self, "_stopping", False):
            log.warning("control plane lost the broker (%s); reconnecting", reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._on_report_acked is not None:
            mid, qos = message.mid, message.qos

            def ack() -> None:  # called by ingest once the report is committed
                client.ack(mid, qos)

            try:
                self._on_report_acked(message.topic, bytes(message.payload), ack, qos)
            except Exception:  # not acknowledged: the broker redelivers it on the next session
                log.exception("report handler failed on %s", message.topic)
            return
        try:
            self._on_report(message.topic, bytes(message.payload))
        except Exception:  # ingest never raises by contract; this is the last line of defence
            log.exception("report handler failed on %s", message.topic)
