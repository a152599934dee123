"""The `fairsteer` command line: the top layer. Each command module turns the lower layers' errors into
messages; nothing below imports from here."""
