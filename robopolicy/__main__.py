"""``python -m robopolicy`` (and ``torchrun -m robopolicy``) run the CLI."""

import sys

from robopolicy.cli import main

sys.exit(main())
