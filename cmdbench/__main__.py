"""``python -m cmdbench`` runs the command line."""

from cmdbench.cli import main

raise SystemExit(main())
