"""The demo's stand-in for the email app: takes signed webhooks, hosts files, feeds the mailbox."""
