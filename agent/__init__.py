"""signal-sidecar: watches mailboxes, copies delivery links into R2, tells the app, and shows every step."""

__version__ = "0.1.0"
