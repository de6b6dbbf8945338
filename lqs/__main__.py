"""``python -m lqs`` runs the ``lqs`` command line."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="lqs")
