"""The mail pipeline: IMAP in, parse, links, R2 transfers, webhook out."""
