"""``python -m arrayloss``: see :mod:`arrayloss._cli`."""

from ._cli import main

raise SystemExit(main())
