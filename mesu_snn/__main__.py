"""``python -m mesu_snn`` = the ``mesu-snn`` command."""
import sys

from .cli import main

sys.exit(main())
