"""Test helper: the ServerApp's SiteQueries with every site's query handler answered in
this process, each site keeping the node state a SuperNode keeps between messages."""

from __future__ import annotations

from typing import Any

import numpy as np


class InProcessQueries:
    """``ask`` calls :func:`clinfuse.federated.flower_stage2.answer` once per site.

    Args:
        nodes: each site's node config (``site``, and ``manifest`` with site-local ones).
        options: the run's task options (reassign after a ``start`` to merge its update).
    """

    def __init__(self, nodes: dict[str, dict[str, Any]], options: dict[str, Any]) -> None:
        self.nodes = nodes
        self.options = options
        self.state: dict[str, dict[str, np.ndarray]] = {s: {} for s in nodes}
        self.queries = 0

    @property
    def n_sites(self) -> int:
        return len(self.nodes)

    def ask(self, name: str, arrays=None, config=None) -> dict[str, dict[str, np.ndarray]]:
        from clinfuse.federated.flower_stage2 import answer
        from privacy.flower.client_app import SiteQuery

        self.queries += 1
        return {
            s: answer(
                SiteQuery(
                    name, dict(arrays or {}), dict(config or {}), node, self.options, self.state[s]
                )
            )
            for s, node in self.nodes.items()
        }
