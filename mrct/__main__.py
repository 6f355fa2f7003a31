"""``python -m mrct`` (also what ``torchrun -m mrct`` runs)."""

from mrct.cli import main

if __name__ == "__main__":
    main()
