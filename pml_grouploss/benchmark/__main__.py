"""``python -m pml_grouploss.benchmark`` == ``pml-grouploss-bench``."""

from .cli import main

raise SystemExit(main())
