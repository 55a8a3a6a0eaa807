"""The agent's only MQTT speaker, its on-disk outbox and reconnect policy."""

from agent.uplink.backoff import jittered_backoff_s
from agent.uplink.mqtt import MqttResultsSink, MqttUplink
from agent.uplink.outbox import Outbox

__all__ = ["MqttResultsSink", "MqttUplink", "Outbox", "jittered_backoff_s"]
