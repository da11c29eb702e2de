"""Fire-event and hazard lifecycles, site risk codes and escalation: pure, no I/O (design.md §3)."""
