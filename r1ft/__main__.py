import sys

from r1ft.cli import main

sys.exit(main())
