import sys

from examples.orders.run import main

sys.exit(main())
