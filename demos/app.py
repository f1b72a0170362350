"""Run the zero-shot action query demo: ``python demos/app.py [vlkd demo options]``.

The same page as ``vlkd demo`` (see ``vlkd demo --help`` and docs/demo.md); the
app itself is built by :func:`vlkd.demo.app.build_demo`.
"""

import sys

from vlkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
