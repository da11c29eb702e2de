"""The running gateway: what wires the pure core to the sources, the store and the outputs.

- ``pipeline``: :class:`Gateway`: the catalog, the store, the committer, the sources, the API and the
  outputs, supervised (a service that fails is restarted with backoff), with a clean shutdown.
- ``committer``: the one thread that writes the embedded store: decode, commit (the urgent lane
  first), then acknowledge; the store's failures retried, everything else contained.
- ``hooks``: the rule engine and the fire-event / hazard workflow inside the committer's transaction
  (:class:`WorkflowHooks`).
"""
