"""Old import path of the backbone exporter: see :mod:`cueco_plugin.cli.export_backbone`
(``python -m cueco_plugin.export`` still runs it)."""

import sys

from cueco_plugin.cli.export_backbone import (  # noqa: F401
    ExportError,
    ExportInfo,
    build_parser,
    build_torchvision_resnet,
    export_backbone,
    main,
    resolve_checkpoint,
)

if __name__ == "__main__":
    sys.exit(main())
