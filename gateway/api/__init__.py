"""The ops API (FastAPI): read what the store holds and act on fire events and hazards.

It never reaches into adapters: reads go to the store through their own connections, actions go
to the committer (the one writer) and come back with the records they produced.

Modules: ``app`` builds the application, ``server`` serves it (its own thread, loop and socket),
``routes/`` one module per resource, ``schemas`` the request and response models, ``deps`` what
routes depend on (context, caller and role, store reads), ``auth`` tokens and roles, ``guard`` the
request-level limits, ``sandbox`` and ``dryrun`` the profile dry run in a worker process.
"""

from gateway.api.app import create_app
from gateway.api.deps import ApiContext
from gateway.api.server import ApiServer

__all__ = ["ApiContext", "ApiServer", "create_app"]
