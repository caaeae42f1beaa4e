"""``python -m seglab`` is the ``seglab`` command (``torchrun ... -m seglab train`` uses it)."""

from seglab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
