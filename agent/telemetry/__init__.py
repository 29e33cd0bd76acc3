"""What the device measures and reports: per-model statistics, resource samples, the publisher with its disk queue."""
