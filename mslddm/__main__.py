import sys

from mslddm.cli import main

sys.exit(main())
