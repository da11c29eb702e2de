"""Rule kinds and the rule engine: pure and synchronous, state kept in plain objects (design.md §3).

Start at :class:`gateway.rules.engine.RuleEngine` (readings, reachability and timers in; effects out):

- ``spec``: what rules a device runs (defaults, overrides, titles); the schema is ``profiles.rule_spec``
- ``engine``: the public ``RuleEngine``, dispatch per (device, metric) and the timer heap
- ``context``: ``RuleContext``, all that evaluators see of the engine, and the records it speaks of
- ``evaluators``: point rules; ``correlations``: site rules (pump start, dual power, false alarms)
- ``reachability``: offline devices, links and sources down, unreadable points
- ``emit``: conditions and fire signals go out here, past the guard of ``modes`` (test mode, shields)
- ``state``: snapshot and restore; ``effects``: the records handed to the hazard workflow
"""
