"""``python -m cueco_plugin.solo SCRIPT [ARGS...]``: runs any solo-learn entry script with CueCo
registered.

solo-learn's argparse scripts (``main_knn.py``, ``main_umap.py``) rebuild a pretrained model with
``solo.methods.METHODS[args.json's method]``; no Hydra callback runs there, so without
registration they fail with ``KeyError: 'cueco'``. This runner calls
:func:`cueco_plugin.registration.register`, then runs ``SCRIPT`` unchanged as ``__main__``
(``sys.argv = [SCRIPT, *ARGS]``, the script's folder first on ``sys.path``, as ``python SCRIPT``
would), so argparse and Hydra scripts (``main_pretrain.py``, ``main_linear.py``) parse their own
arguments::

    python -m cueco_plugin.solo "$SOLO_LEARN_ROOT/main_knn.py" --pretrained_checkpoint_dir RUN ...

Processes the script starts itself (Lightning's DDP launcher) re-run the script directly; for
``main_pretrain.py`` the YAML's Hydra callback registers CueCo there.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from cueco_plugin.registration import register

USAGE = "usage: python -m cueco_plugin.solo <solo-learn script, e.g. main_knn.py> [its arguments]"


def main(argv: list[str] | None = None) -> None:
    """Registers CueCo, then runs ``argv[0]`` (a solo-learn script) as ``__main__`` with
    ``argv[1:]`` as its arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0])
    if not script.is_file() or script.suffix != ".py":
        raise SystemExit(
            f"cueco_plugin.solo: {argv[0]!r} is not a Python script; give a solo-learn entry "
            "script such as $SOLO_LEARN_ROOT/main_knn.py"
        )
    register()
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
