"""The agent's only MQTT speaker."""

from agent.uplink.mqtt import MqttUplink

__all__ = ["MqttUplink"]
