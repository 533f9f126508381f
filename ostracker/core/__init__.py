"""What every backend shares: errors, the DRMAA2 types, on-disk records, the store,
the JobTracker base class and the registry of backends (README, "Design")."""
