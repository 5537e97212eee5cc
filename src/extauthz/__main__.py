"""``python -m extauthz`` is the ``extauthz`` command."""

import sys

from extauthz.cli import main

sys.exit(main())
