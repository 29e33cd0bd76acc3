"""edgectl: the operator CLI for the edge fleet."""
