"""`python -m dlm_lsp` is `dlm-lsp`."""

import sys

from .cli import main

sys.exit(main())
