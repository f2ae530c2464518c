"""``python -m cli``: the same as the ``somnus`` command."""

from cli import main

main()
