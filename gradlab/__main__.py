"""`python -m gradlab` works like the `gradlab` command."""

from gradlab.cli import main

main()
