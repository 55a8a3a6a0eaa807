"""Governance: audit log, retraining and rollout proposals, labelling, retraining, lineage.

See docs/drift.md for the loop from a drift alert to a validated, canary-rolled release.
"""
