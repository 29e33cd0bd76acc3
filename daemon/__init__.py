"""What both daemons (edge-agent, edge-controller) share and neither owns: logging set-up and systemd notification."""
