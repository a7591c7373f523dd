# Two commands: `make demo` runs the whole workflow on the built-in demo corpus, `make test` runs the tests.
# Both set up everything first (Debian packages when root, .venv with pinned packages); a second run installs nothing.
CORES ?= all
# The tests in worker processes (pytest-xdist), each test file kept on one worker so that its module fixtures are
# built once: on the 2-core VM the suite takes 9 minutes instead of 14. `make test TEST_WORKERS=0` runs it in one.
TEST_WORKERS ?= 2
SNAKEMAKE = .venv/bin/snakemake

.PHONY: setup demo test cluster-test dry-run clean

setup:
	@bash tools/setup.sh

demo: setup
	$(SNAKEMAKE) all --cores $(CORES) --configfile config/examples/demo.yaml
	@echo; echo "== results/eval/summary.md =="; cat results/eval/summary.md 2>/dev/null || true

test: setup
	.venv/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

cluster-test: setup
	bash .ci/cluster-test.sh

dry-run: setup
	$(SNAKEMAKE) -n all

clean:
	rm -rf results logs .snakemake
