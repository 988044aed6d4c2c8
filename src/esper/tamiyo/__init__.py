"""Tamiyo holds the controllers: the heuristic policy, the signal tracker, the policy network."""

from esper.tamiyo.decision import Decision
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.tracker import SignalTracker

__all__ = ["Decision", "HeuristicConfig", "HeuristicTamiyo", "SignalTracker"]
