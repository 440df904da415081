"""Entry point of ``python -m retrieval``."""

import os
import sys

# TensorFlow's C++ start-up chatter hides the output people came for; warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main())
