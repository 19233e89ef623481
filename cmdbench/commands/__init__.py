"""One module per ``cmdbench`` subcommand; each defines ``add_parser(subparsers)`` and ``run(args)``."""
