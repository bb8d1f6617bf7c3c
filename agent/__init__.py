"""signal-sidecar: watches mailboxes, copies delivery links into R2, tells the app, shows it all."""

__version__ = "0.1.0"
