"""`python -m rowrnn` and the `rowrnn` console script.

The command-line module is imported inside `run`, so a Ctrl-C that lands while Python is still
importing it gives the same one-line message and exit code as one that lands later.
"""

import os
import sys


def run() -> None:
    try:
        from rowrnn.cli import main
    except KeyboardInterrupt:
        print("rowrnn: interrupted", file=sys.stderr, flush=True)
        os._exit(130)  # see rowrnn.cli.exit_interrupted
    main()


if __name__ == "__main__":
    run()
