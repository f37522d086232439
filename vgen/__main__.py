import sys

from . import config

# Before torch loads (vgen.cli imports it): OpenMP threads that spin while they wait turn a core
# taken by another process into a many times slower image; PASSIVE unless the user chose (#23).
config.passive_openmp()

from .cli import main  # noqa: E402

sys.exit(main())
