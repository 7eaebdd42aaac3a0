import sys

from edge_mer.cli import main

sys.exit(main())
