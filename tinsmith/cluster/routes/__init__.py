"""The API server's routes, one ``APIRouter`` per concern; ``tinsmith.cluster.server.build_app``
includes them all. Route modules share state only through ``tinsmith.cluster.state.State``."""
