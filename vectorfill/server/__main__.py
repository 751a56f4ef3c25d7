import sys

from vectorfill.server.serve import main

sys.exit(main())
