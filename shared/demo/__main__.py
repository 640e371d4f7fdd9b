"""`python -m shared.demo`: run the local demo federation."""

from shared.demo.federation import main

main()
