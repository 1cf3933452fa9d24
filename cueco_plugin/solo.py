"""``python -m cueco_plugin.solo SCRIPT [ARGS...]``: see :mod:`cueco_plugin.cli.solo`."""

from cueco_plugin.cli.solo import main

if __name__ == "__main__":
    main()
