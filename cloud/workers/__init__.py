"""Scale-out machinery: ingest nodes, leader leases, storage tiers and their counters.

* :mod:`cloud.workers.counters`: every ingest and retention counter, in one place.
* :mod:`cloud.workers.leader`: a lease row in the database elects one node for
  singleton background work (retention) on any number of control-plane nodes.
* :mod:`cloud.workers.tables`: the tables for the above (migration ``0005_scale``).
* :mod:`cloud.workers.ingest_node`: ``python -m cloud.workers.ingest_node``, an
  ingest-only process; run several against one database and one broker.
"""
