"""The error tree. Library exceptions never pass the adapter that uses the library.

::

    FiregwError
     ├── ConfigError            bad settings, profile or inventory (names file and field)
     ├── DecodeError            one payload or register block could not be used
     ├── SourceUnavailable      a broker or device cannot be reached (retryable)
     │    └── AuthenticationFailed   credentials or certificate refused (not retryable)
     ├── SinkUnavailable        a remote sink cannot take data now (retryable)
     └── TransitionError        an illegal lifecycle transition
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "DecodeError",
    "FiregwError",
    "SinkUnavailable",
    "SourceUnavailable",
    "TransitionError",
]


class FiregwError(Exception):
    """Base of every error firegw raises on purpose."""


class ConfigError(FiregwError):
    """A configuration, profile or inventory problem. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DecodeError(FiregwError):
    """A payload that does not decode. The message is what a person reads in the dead letter."""


class SourceUnavailable(FiregwError):
    def __init__(self, message: str, *, source: str, retryable: bool = True) -> None:
        self.source = source
        self.retryable = retryable
        super().__init__(f"{source}: {message}")


class AuthenticationFailed(SourceUnavailable):
    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message, source=source, retryable=False)


class SinkUnavailable(FiregwError):
    def __init__(self, message: str, *, sink: str, retry_after: float | None = None) -> None:
        self.sink = sink
        self.retry_after = retry_after
        super().__init__(f"{sink}: {message}")


class TransitionError(FiregwError):
    """An action that the lifecycle does not allow from the current state."""
