"""The sweep report, again or for a sweep directory of your own: `python -m cnn.tools.report <sweep dir>`."""

from cnn.reporting.sweep_report import main

if __name__ == "__main__":
    main()
