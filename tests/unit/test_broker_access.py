"""The embedded broker's ACL: the production pattern (a device reads its commands, writes its reports)."""

from __future__ import annotations

from amqtt.contexts import Action

from agent.contract import Topics
from cloud.core.broker_access import CONTROL_PLANE_USERNAME, BrokerAccess

TOPICS = Topics("ef/v1")


def access() -> BrokerAccess:
    return BrokerAccess(TOPICS, lambda device_id, token: (device_id, token) == ("cam-a", "efd_a"))


def test_a_device_writes_only_its_own_reports() -> None:
    acl = access()
    for topic in (TOPICS.status("cam-a"), TOPICS.telemetry("cam-a"), TOPICS.job("cam-a", "j1"), TOPICS.drift("cam-a"),
                  TOPICS.samples("cam-a")):
        assert acl.allowed("cam-a", topic, Action.PUBLISH), topic
    for topic in (TOPICS.status("cam-b"), TOPICS.commands("cam-a"), TOPICS.commands("cam-b"), "ef/v1/cam-a",
                  "other/cam-a/status", "ef/v1/cam-a/status/extra"):
        assert not acl.allowed("cam-a", topic, Action.PUBLISH), topic


def test_a_device_reads_only_its_own_commands() -> None:
    acl = access()
    for action in (Action.SUBSCRIBE, Action.RECEIVE):
        assert acl.allowed("cam-a", TOPICS.commands("cam-a"), action)
        for topic in (TOPICS.commands("cam-b"), TOPICS.status("cam-a"), "ef/v1/+/commands", "ef/v1/cam-a/#", "#"):
            assert not acl.allowed("cam-a", topic, action), (topic, action)
    assert not acl.allowed(None, TOPICS.commands("cam-a"), Action.SUBSCRIBE)


def test_logins() -> None:
    acl = access()
    assert acl.authenticate("cam-a", "efd_a", "ef-agent-cam-a")
    assert not acl.authenticate("cam-a", "efd_a", "ef-agent-cam-b")  # someone else's session
    assert not acl.authenticate("cam-a", "efd_b", "ef-agent-cam-a")
    assert not acl.authenticate(None, None, "ef-agent-cam-a")
    assert acl.authenticate(CONTROL_PLANE_USERNAME, acl.control_plane_password, "ef-cloud-1")
    assert not acl.authenticate(CONTROL_PLANE_USERNAME, "guess", "ef-cloud-1")
    assert acl.allowed(CONTROL_PLANE_USERNAME, "ef/v1/+/status", Action.SUBSCRIBE)
