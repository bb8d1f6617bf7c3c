"""`python -m agent` is the `signal-sidecar` command."""

from agent.cli import main

raise SystemExit(main())
