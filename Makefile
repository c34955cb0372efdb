# The two commands of the README. Both do their own set-up on a fresh machine.
PYTHON ?= python3

.PHONY: demo test install-test-deps

demo:            ## train the demo model and write every picture into ./tinygraph-demo/
	$(PYTHON) -m pip install -q -e ".[viz]"
	$(PYTHON) -m tinygraph demo

test:            ## install what the tests need (Python + system packages) and run them
	bash scripts/install_test_deps.sh
	$(PYTHON) -m pytest -q -p no:cacheprovider
