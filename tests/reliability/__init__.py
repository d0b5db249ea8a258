"""Fault-injection suite (`make test-reliability`): kills, races, full and read-only disks, hostile input."""
