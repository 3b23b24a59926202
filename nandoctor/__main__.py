"""``python -m nandoctor``: the same command line as ``nandoctor``."""

from nandoctor.cli import main

main()
