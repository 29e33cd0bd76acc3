"""Running as one of several controllers: duties, shared subscriptions, leases, retained state."""
