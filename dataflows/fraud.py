"""The card-fraud stream, the demo's: ``python -m bytewax.run dataflows.fraud:flow`` runs
``streams/fraud.toml`` through the one graph of :mod:`dataflows.stream`."""

from dataflows.stream import STREAMS, lazy_flow

__getattr__ = lazy_flow(STREAMS / "fraud.toml")
