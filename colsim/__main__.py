"""``python -m colsim`` is the ``colsim`` command."""
from colsim.cli import main

main()
