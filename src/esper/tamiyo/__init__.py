"""Controllers that decide what seeds do: the heuristic policy, signal tracker, policy network."""
