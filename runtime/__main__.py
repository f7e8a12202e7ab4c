"""`python3 -m edgesdk.runtime run|validate ...` (also the standalone zipapp's entry)."""
import sys

from edgesdk.runtime.cli import main

sys.exit(main())
