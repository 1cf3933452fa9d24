"""Old import path of the CIFAR folder exporter: see :mod:`cueco_plugin.cli.cifar_to_folder`
(``python -m cueco_plugin.cifar_folder`` still runs it)."""

from cueco_plugin.cli.cifar_to_folder import (  # noqa: F401
    CIFAR10_CLASSES,
    MANIFEST_NAME,
    SPLITS,
    build_parser,
    export_arrays,
    main,
    read_sources,
    read_torchvision,
    select_per_class,
)

if __name__ == "__main__":
    raise SystemExit(main())
