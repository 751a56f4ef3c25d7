import sys

from vectorfill.local.embeddings_server.serve import main

sys.exit(main())
