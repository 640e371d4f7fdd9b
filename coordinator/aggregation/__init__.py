"""A round's updates: received and measured, spooled, and folded into its delta."""
