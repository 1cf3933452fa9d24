"""``python -m cueco_plugin.evaluate``: see :mod:`cueco_plugin.cli.evaluate`."""

from cueco_plugin.cli.evaluate import main

if __name__ == "__main__":
    main()
