import sys

from fedkit.cli import main

sys.exit(main())
