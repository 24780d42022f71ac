"""What the glocalk-np commands (cli.py) share: how a command ends
(process.py), its argument types and common options (params.py), and what
it writes (output.py)."""
