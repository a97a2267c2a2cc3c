"""``python -m colsim.cli`` is the ``colsim`` command (tests and subprocess callers use it)."""
from colsim.cli import main

main()
