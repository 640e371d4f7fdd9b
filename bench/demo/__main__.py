"""`python -m bench.demo`: run the local demo federation."""

from bench.demo.federation import main

main()
