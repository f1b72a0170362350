import sys

from vlkd.cli import main

sys.exit(main())
