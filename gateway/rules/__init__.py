"""Rule kinds and the rule engine: pure and synchronous, state kept in plain objects (design.md §3)."""
