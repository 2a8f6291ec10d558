"""`python -m reprotune.predict`: the command's short name; the command is reprotune/serving/predict.py."""

import sys

from reprotune.serving.predict import main

if __name__ == "__main__":
    sys.exit(main())
