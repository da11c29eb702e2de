"""Device simulators for tests and the demo: ``python -m simulators fleet | pumproom | workflow``."""
