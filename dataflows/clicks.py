"""The shop-clicks dataflow: will this click lead to a purchase within 30 minutes?

The same graph, operators and settings as :mod:`dataflows.fraud`, on another stream
(:mod:`undertow.clickstream`): its own event schema, its own feature spec
(``specs/clicks.toml``: per user, per (user, page) pair, and hopping windows per page), labels
keyed by ``user_id`` with the boolean ``converted``. Run it with
``python -m bytewax.run dataflows.clicks:flow``.
"""

from __future__ import annotations

from dataflows.fraud import Scenario, flow_from_environment
from undertow.clickstream import CLICK_EVENTS

CLICKS = Scenario("clicks", CLICK_EVENTS, "clicks.toml", "user_id", "converted")

flow = flow_from_environment(CLICKS)
