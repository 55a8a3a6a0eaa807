"""Fetch, verify and store model packages."""

from agent.update.fetcher import ArtifactFetcher, HttpFetcher
from agent.update.installer import fetch_and_verify
from agent.update.store import ActivePackage, PackageStore

__all__ = ["ActivePackage", "ArtifactFetcher", "HttpFetcher", "PackageStore", "fetch_and_verify"]
