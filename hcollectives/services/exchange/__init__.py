"""How a sealed iteration's collective runs between daemons: tree or ring AllReduce,
AllGather, and the store fallback each of them ends in. Functions over a
`NodeSession` (services/node_session.py), which owns all state."""
