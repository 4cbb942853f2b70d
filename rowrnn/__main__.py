"""`python -m rowrnn` and the `rowrnn` console script.

The command-line module is imported inside `run`, so a Ctrl-C that lands while Python is still
importing it gives the same one-line message and exit code as one that lands later.
"""

import sys


def run() -> None:
    try:
        from rowrnn.cli import main
    except KeyboardInterrupt:
        print("rowrnn: interrupted", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
