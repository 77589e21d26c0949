"""The shop-clicks stream: ``python -m bytewax.run dataflows.clicks:flow`` runs
``streams/clicks.toml`` through the one graph of :mod:`dataflows.stream`."""

from dataflows.stream import STREAMS, lazy_flow

__getattr__ = lazy_flow(STREAMS / "clicks.toml")
