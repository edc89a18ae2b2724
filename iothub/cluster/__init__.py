"""Cluster mode: several gateways on Ray behind one port, and the supervisor as an actor.

Imported only when ``IOTHUB_WORKERS`` is more than 1; one process never imports Ray.

- :mod:`.batches`: what goes to another process goes in batches, one call per loop turn.
- :mod:`.links`: the supervisor's link to a gateway actor, and a gateway's client of the supervisor
  actor — the in-process interfaces of the two planes, across processes.
- :mod:`.relay`: telemetry for another gateway's dashboards, batched on a WebSocket between the two.
- :mod:`.forwarding`: a request for a session another gateway owns is answered by that gateway.
- :mod:`.actors`: the gateway actor (a whole front end on the shared port) and the supervisor actor.
- :mod:`.launch`: ``iothub serve --workers N``: start them, watch, stop them all on a signal.
"""
