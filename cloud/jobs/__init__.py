"""Long work off the request path: training, builds, dataset imports and retraining as jobs.

A job is a row of ``jobs`` (:mod:`cloud.jobs.tables`) that the API, the CLI and the
dashboard read; a queue (:mod:`cloud.jobs.queue`) hands its id to a worker that runs it
(:mod:`cloud.jobs.runner`). docs/adr/0010-long-work-as-jobs.md says why two queues.
"""
