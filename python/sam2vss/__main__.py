import sys

from sam2vss.cli import main

sys.exit(main())
