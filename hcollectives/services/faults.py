"""Fault injection for tests: drop chosen messages on their way to a peer.

The store fallback exists for messages that never arrive; the only honest way
to test it end to end is to make them not arrive. A daemon reads
``HCOLLECTIVES_FAULTS`` once at start, a ``;``-separated list of rules::

    drop:<message type>:<destination node or *>:<iteration or *>

e.g. ``drop:result:local-1:2`` loses the AllReduce result sent down the tree
to node ``local-1`` in iteration 2. Unset (the normal case) means no faults.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError

ENV_VAR = "HCOLLECTIVES_FAULTS"


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    node: str
    iteration: str

    def matches(self, kind: str, node: str, iteration: int | None) -> bool:
        return (self.kind == kind and self.node in ("*", node)
                and self.iteration in ("*", str(iteration)))


@dataclass(frozen=True, slots=True)
class Faults:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> "Faults":
        rules = []
        for item in filter(None, (s.strip() for s in (spec or "").split(";"))):
            parts = item.split(":")
            if len(parts) != 4 or parts[0] != "drop":
                raise ConfigurationError(f"{ENV_VAR}: bad rule {item!r}; expected drop:TYPE:NODE:ITERATION")
            rules.append(Rule(*parts[1:]))
        return cls(tuple(rules))

    def drops(self, kind: str, node: str, iteration: int | None) -> bool:
        return any(rule.matches(kind, node, iteration) for rule in self.rules)
