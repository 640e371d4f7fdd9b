"""The offline demo: a tiny vision-language model, a generated data set, a local federation."""
