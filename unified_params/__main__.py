"""``python -m unified_params``: the command-line tool."""

from ._cli import main

raise SystemExit(main())
