"""What the glocalk-np commands (cli.py) share: how a command ends
(process.py), its argument types and common options (params.py), what it
reads (inputs.py) and what it writes (output.py); and the work of the
commands that train (fitting.py), which only they import."""
