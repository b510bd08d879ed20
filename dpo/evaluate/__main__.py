import sys

from dpo.evaluate.tables import main

sys.exit(main())
