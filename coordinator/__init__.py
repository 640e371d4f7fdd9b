"""The coordinator: runs rounds, validates and aggregates silo updates, checkpoints every round."""
