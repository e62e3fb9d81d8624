import sys

from localdev.standin.cli import main

sys.exit(main())
