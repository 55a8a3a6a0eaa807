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

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

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
