"""``python -m msresnet`` runs the command line."""

from msresnet.cli import main

raise SystemExit(main())
