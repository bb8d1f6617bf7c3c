"""Alert rules evaluated on the exported metrics, and their notifiers."""
