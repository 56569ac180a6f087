"""`python -m casavi_pipeline.cli`: the `casavi-pipeline` command."""

import sys

from casavi_pipeline.cli import main

sys.exit(main())
