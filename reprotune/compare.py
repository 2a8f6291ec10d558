"""`python -m reprotune.compare`: the command's short name; the command is reprotune/serving/compare.py."""

import sys

from reprotune.serving.compare import main

if __name__ == "__main__":
    sys.exit(main())
