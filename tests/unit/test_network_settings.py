"""Network settings per hardware profile: the profile's values, the config's over them."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig
from agent.profiles import NetworkSettings, load_profiles


def test_every_profile_sets_its_network_and_field_devices_tolerate_slow_links() -> None:
    profiles = load_profiles()
    for name, profile in profiles.items():
        assert "network" in profile.model_fields_set, f"{name} does not say how it uses the network"
    wired, cellular = profiles["x86-64-avx2"].network, profiles["rpi5-arm64"].network
    assert cellular.keepalive_s > wired.keepalive_s
    assert cellular.reconnect_max_s > wired.reconnect_max_s
    assert cellular.download_deadline_s > wired.download_deadline_s


def test_the_config_overrides_the_profile_field_by_field() -> None:
    cellular = load_profiles()["rpi5-arm64"].network
    config = AgentConfig(device_id="cam-1", keepalive_s=20)
    network = config.network(cellular)
    assert network.keepalive_s == 20
    assert network.download_deadline_s == cellular.download_deadline_s
    assert AgentConfig(device_id="cam-1").network(None) == NetworkSettings()


def test_bounds_out_of_order_are_refused_with_the_fields_named() -> None:
    with pytest.raises(ValueError, match="reconnect_min_s"):
        AgentConfig(device_id="cam-1", reconnect_min_s=120).network(load_profiles()["rpi5-arm64"].network)
