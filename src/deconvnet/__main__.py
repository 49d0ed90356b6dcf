"""``python -m deconvnet`` (and ``torchrun ... -m deconvnet``): the ``deconvnet`` command."""

import sys

from .cli import main

sys.exit(main())
