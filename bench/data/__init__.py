"""The benchmark's data: release adapters, scenarios, the partition into silos, synthetic twins."""
