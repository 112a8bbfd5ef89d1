"""``python -m parallel_pilot`` runs the ``pilot`` command (used by ``pilot up``)."""

from parallel_pilot.client.cli import main

if __name__ == "__main__":
    main()
