"""`fedmllm-bench`: the benchmark grid (data set x scenario x method x seed) and its reports."""
