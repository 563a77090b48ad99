"""Query routing: embed a prompt, predict with a RoRF-style random forest which backends would
answer it as well as the best one, and send it to the cheapest of those."""

from router.policy import RouteDecision
from router.router import Router

__all__ = ["Router", "RouteDecision"]
