"""Impaired networks for real agents: one network namespace per device, joined to this host by a veth pair.

Everything stays on this machine. Each :class:`DeviceLink` is a namespace with a veth
pair: the device end (``10.x.y.2``) inside, the host end (``10.x.y.1``) in the root
namespace, and a default route through it, so an agent in the namespace reaches every
address of this host (services listen on ``0.0.0.0``) and nothing else.

Impairments, all real kernel paths (this kernel has no ``netem``):

* **loss** — nftables inside the namespace drops a random share of packets both ways
  on the veth (``numgen random mod 100 < N drop``);
* **bandwidth** — a token-bucket filter (``tc ... tbf``) on both ends of the veth; its
  queue also builds the delay a slow radio link has;
* **partition** — nftables drops everything on the veth; sockets stay open, as they do
  when a cellular link goes away.

Creating namespaces needs root (CAP_NET_ADMIN) plus ``ip`` (iproute2), ``tc`` and
``nft`` (Debian's nftables; ``make netns-deps`` installs them). :func:`netns_unavailable`
says why, when they cannot be made, so tests can skip (or fail under
``EDGEFLEET_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["DeviceLink", "NetnsError", "netns_unavailable"]

# 10.200.0.0/14 split into /30 links; a random start keeps parallel test runs apart.
_POOL = ipaddress.ip_network("10.200.0.0/14")


class NetnsError(RuntimeError):
    """A namespace, link or rule could not be set up."""


def _run(*argv: str, input_text: str | None = None) -> None:
    done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"'{tool}' is not installed (make netns-deps installs iproute2 and nftables)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"efprobe{secrets.token_hex(3)}"
    try:
        _run("ip", "netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run("ip", "netns", "exec", probe, "nft", "list", "ruleset")
    except NetnsError as exc:
        return f"nftables does not work inside a namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _free_link_network() -> ipaddress.IPv4Network:
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    links = list(_POOL.subnets(new_prefix=30))
    start = secrets.randbelow(len(links))
    for offset in range(len(links)):
        candidate = links[(start + offset) % len(links)]
        host_addr = str(next(candidate.hosts()))
        if f" {host_addr}/" not in taken:
            return candidate
    raise NetnsError("no free /30 left in 10.200.0.0/14")


@dataclass
class DeviceLink:
    """One device's namespace and its link to this host. Use as a context manager."""

    name: str = field(default_factory=lambda: f"ef{secrets.token_hex(4)}")
    network: ipaddress.IPv4Network = field(default_factory=_free_link_network)
    impairments: dict[str, str] = field(default_factory=dict)

    @property
    def host_veth(self) -> str:
        return f"{self.name}h"

    @property
    def device_veth(self) -> str:
        return f"{self.name}d"

    @property
    def host_address(self) -> str:
        """This host's end of the link: the address the device uses to reach services here."""
        return str(self.network.network_address + 1)

    @property
    def device_address(self) -> str:
        return str(self.network.network_address + 2)

    def __enter__(self) -> DeviceLink:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.device_veth)
            _run("ip", "link", "set", self.device_veth, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_veth)
            _run("ip", "link", "set", self.host_veth, "up")
            inside = ("ip", "netns", "exec", self.name)
            _run(*inside, "ip", "addr", "add", f"{self.device_address}/30", "dev", self.device_veth)
            _run(*inside, "ip", "link", "set", self.device_veth, "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "route", "add", "default", "via", self.host_address)
            # One table for every impairment; its chains see only the veth, never loopback.
            _run(*inside, "nft", "-f", "-", input_text=(
                "table inet edgefleet {\n"
                "  chain input { type filter hook input priority 0; policy accept; }\n"
                "  chain output { type filter hook output priority 0; policy accept; }\n"
                "}\n"))
        except NetnsError:
            self.destroy()
            raise

    def destroy(self) -> None:
        # Deleting the namespace deletes the device end, which takes the host end with it.
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True, check=False)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    # --- impairments -------------------------------------------------------------------
    def _set_rules(self) -> None:
        rules = [rule for key in ("partition", "loss") if (rule := self.impairments.get(key))]
        script = "flush table inet edgefleet\n" + "".join(
            f"add rule inet edgefleet input iifname {self.device_veth} {rule}\n"
            f"add rule inet edgefleet output oifname {self.device_veth} {rule}\n" for rule in rules)
        _run("ip", "netns", "exec", self.name, "nft", "-f", "-", input_text=script)

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of packets at random, each way (0 clears it)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be 0..100, not {percent}")
        if percent:
            self.impairments["loss"] = f"numgen random mod 100 < {percent} drop"
        else:
            self.impairments.pop("loss", None)
        self._set_rules()

    def partition(self) -> None:
        """Cut the link: every packet is dropped, sockets stay open."""
        self.impairments["partition"] = "drop"
        self._set_rules()

    def heal(self) -> None:
        """End a partition (loss and bandwidth caps stay)."""
        self.impairments.pop("partition", None)
        self._set_rules()

    def set_bandwidth(self, kbit_per_s: int, *, queue_ms: int = 500) -> None:
        """Cap the link at ``kbit_per_s`` each way; packets wait up to ``queue_ms`` in the queue."""
        burst_bytes = max(1600, kbit_per_s * 1000 // 8 // 20)  # about 50 ms of traffic
        for argv in (("tc", "qdisc", "replace", "dev", self.host_veth),
                     ("ip", "netns", "exec", self.name, "tc", "qdisc", "replace", "dev", self.device_veth)):
            _run(*argv, "root", "tbf", "rate", f"{kbit_per_s}kbit", "burst", str(burst_bytes),
                 "latency", f"{queue_ms}ms")
