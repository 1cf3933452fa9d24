"""Old import path of :mod:`cueco_plugin.cli.pretrain`; ``python -m cueco_plugin.pretrain``."""

from cueco_plugin.cli.pretrain import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
