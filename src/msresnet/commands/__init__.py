"""What the ``msresnet`` commands do, as library functions (one module per command); :mod:`msresnet.cli` holds
the argument parser and one thin function per command that calls these and prints their results."""
