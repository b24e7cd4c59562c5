"""Where an actor runs: its Ray node and that node's resources (for status and placement checks)."""

from __future__ import annotations


def node_info() -> tuple[str, dict[str, float]]:
    """(node id, that node's resources: custom ones included,
    per-node ``node:`` labels left out)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            resources = {
                k: float(v)
                for k, v in node.get("Resources", {}).items()
                if not k.startswith("node:")
            }
            return node_id, resources
    return node_id, {}
