"""`python -m jaco.cli`: the same as the `jaco` command."""

from jaco.cli.main import main

main()
