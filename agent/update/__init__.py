"""Fetch, verify, stage and switch model packages: the install state machine."""

from agent.update.fetcher import ArtifactFetcher, HttpFetcher
from agent.update.installer import fetch_and_verify
from agent.update.machine import InstallState, job_state_for, next_state, resume_state
from agent.update.probation import Baseline, Evidence, ProbationLimits, ProbationWatch, Verdict, judge
from agent.update.store import ActivePackage, InstallRecord, PackageStore, UpdateState

__all__ = ["ActivePackage", "ArtifactFetcher", "Baseline", "Evidence", "HttpFetcher", "InstallRecord",
           "InstallState", "PackageStore", "ProbationLimits", "ProbationWatch", "UpdateState", "Verdict",
           "fetch_and_verify", "job_state_for", "judge", "next_state", "resume_state"]
