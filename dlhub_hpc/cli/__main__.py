"""``python -m dlhub_hpc.cli``"""

from dlhub_hpc.cli import main

main()
