"""Device drivers: one process owns each device, writes stamped records into a ring buffer."""
