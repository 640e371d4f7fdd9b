"""The benchmark: its data (bench.data), the demo (bench.demo), the grid and its reports."""
