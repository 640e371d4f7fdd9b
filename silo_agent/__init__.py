"""The silo agent: trains the federation's LoRA adapter on private data that never leaves."""
