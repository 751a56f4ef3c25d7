import sys

from vectorfill.local.embeddings_server.runner import main

sys.exit(main())
