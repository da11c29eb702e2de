"""The ops API (FastAPI): read what the store holds and act on fire events and hazards.

It never reaches into adapters: reads go to the store through their own connections, actions go
to the committer (the one writer) and come back with the records they produced.
"""

from gateway.api.app import ApiContext, ApiServer, create_app

__all__ = ["ApiContext", "ApiServer", "create_app"]
