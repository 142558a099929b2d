"""``python -m ltexec`` runs the command line."""

from ltexec.cli import main

raise SystemExit(main())
