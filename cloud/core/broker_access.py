"""Who may do what on the embedded broker: the production model (docs/security.md) without TLS.

Production Mosquitto knows a device by its certificate and lets it read only its own
command topic and write only its own reports (an ``acl_file`` with ``pattern`` lines).
The embedded broker applies the same rules, knowing a device by MQTT credentials
instead: username = device id, password = the device API token issued at enrollment
(checked against the database through ``verify_device``). The control plane's own
client logs in with a random secret made when the broker starts.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from agent.contract import Topics
from agent.contract.topics import TopicError, device_client_id

# Contains "/", so no device id (agent.contract.topics.DEVICE_ID_PATTERN) can take it.
CONTROL_PLANE_USERNAME = "edgefleet/control-plane"

__all__ = ["CONTROL_PLANE_USERNAME", "BrokerAccess", "FleetBroker"]


@dataclass
class BrokerAccess:
    """The embedded broker's credentials check and ACL.

    ``verify_device(device_id, password)`` says whether ``password`` is a valid, unrevoked
    API token of that device; it may block (a database query), so it runs off the broker loop.
    """

    topics: Topics
    verify_device: Callable[[str, str], bool]
    control_plane_password: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def authenticate(self, username: str | None, password: str | None, client_id: str | None) -> bool:
        if not username or not password:
            return False  # no anonymous access
        if username == CONTROL_PLANE_USERNAME:
            return secrets.compare_digest(password, self.control_plane_password)
        # A device may only use its own client id: a persistent session carries its
        # subscriptions, so taking over another device's session would read its commands.
        if client_id != device_client_id(username):
            return False
        return self.verify_device(username, password)

    def allowed(self, username: str | None, topic: str, action: Action) -> bool:
        if username == CONTROL_PLANE_USERNAME:
            return True
        if not username:
            return False
        if action in (Action.SUBSCRIBE, Action.RECEIVE):
            # Exactly its own command topic: no wildcards, no one else's reports or commands.
            return topic == self.topics.commands(username)
        try:
            device_id, _ = self.topics.parse_report(topic)
        except TopicError:
            return False
        return device_id == username


@dataclass
class _PluginConfig:
    access: Any = None


class FleetAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt authentication through :class:`BrokerAccess` (anonymous clients are refused)."""

    Config = _PluginConfig

    async def authenticate(self, *, session: Session) -> bool | None:
        access: BrokerAccess = self.config.access
        return await asyncio.to_thread(access.authenticate, session.username, session.password, session.client_id)


class FleetTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt per-device topic ACL through :class:`BrokerAccess`."""

    Config = _PluginConfig

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        access: BrokerAccess = self.config.access
        if session is None or topic is None or action is None:
            return False
        return access.allowed(session.username, topic, action)


class FleetBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt with retained messages delivered only where they belong.

    On every connect amqtt replays the retained messages matching *every* client's
    subscription filters to the new client: the control plane's ``+/status`` filter sent
    each agent the other devices' retained status. Here a retained message goes only to a
    session that holds the matching filter itself, and only if it may receive that topic.
    """

    async def _initialize_client_session(self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        """Check credentials before amqtt touches the stored session of the client id.

        amqtt deletes a stored session (clean start), or updates it and takes over its
        connection, and only then checks credentials: a client without any could disconnect
        a device and drop the commands queued for it. Refused here, it touches nothing.
        Then the stored session is picked up as amqtt does it.
        """
        handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        if not await self._authenticate(session, None):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise MQTTError(f"refused client {session.client_id!r} from {remote_address}:{remote_port}: "
                            "no valid credentials")
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            stored, _ = self._sessions[session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                setattr(stored, name, getattr(session, name))
            session = stored
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter, _ = subscription
        own = [qos for subscriber, qos in self._subscriptions.get(topic_filter, [])
               if subscriber.client_id == session.client_id]
        handler = self._get_handler(session)
        if not own or handler is None:
            return
        publishing = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            qos = min(own[0], retained.qos if retained.qos is not None else own[0])
            publishing.append(asyncio.ensure_future(
                handler.mqtt_publish(retained.topic, retained.data, qos, retain=True)))
        if publishing:
            await asyncio.wait(publishing)
