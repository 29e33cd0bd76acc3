"""What serves right now: the serving table, in-flight counting, the health watch, the input reservoir, the live tap."""
