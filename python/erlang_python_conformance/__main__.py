import sys

from erlang_python_conformance import main

sys.exit(main(sys.argv[1:]))
