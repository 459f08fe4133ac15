# The two commands of the README:
#   make book   set up, then build the HTML book executing every notebook (cpu preset) -> _build/html
#   make test   set up, then run the unit tests and every notebook under nbval (ci preset)
# `make setup` alone creates .venv and installs icmlib with everything the book and tests need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup book test bench clean vvc

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# Checkpoints trained by the book live in .cache/book (train-or-load: a rebuild reuses them).
book: $(STAMP)
	ICM_PRESET=$${ICM_PRESET:-cpu} ICM_CACHE=$${ICM_CACHE:-$(CURDIR)/.cache/book} \
	  MPLBACKEND=module://matplotlib_inline.backend_inline \
	  $(BIN)/jupyter-book build . --all
	# check the pages a reader gets: every chapter exists, shows its figures, has no errors
	ICM_BOOK_HTML=_build/html $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_book.py -k every_chapter_page
	@echo "Book built: open _build/html/index.html"

# Tests use a fresh cache of their own so they never pick up the book's checkpoints.
test: $(STAMP)
	rm -rf .cache/test
	ICM_PRESET=ci ICM_CACHE=$(CURDIR)/.cache/test MPLBACKEND=Agg \
	  $(BIN)/python -m pytest tests book --nbval-lax -p no:cacheprovider $(PYTEST_ARGS)

# Optional: the VVC anchor's encoder and decoder (VVenC 1.14.0, VVdeC 3.2.0), built with CMake
# into tools/vvc/bin, where icmlib.evaluation.anchors.VVC finds them with no variable set (`make clean`
# keeps them; delete tools/vvc to rebuild). Both release tarballs are checked against pinned
# sha256 sums before anything is built (nice -n 10, 2 jobs). Offline, point VVC_SRC at a
# folder holding vvenc-1.14.0.tar.gz and vvdec-3.2.0.tar.gz; without it the two tarballs are
# downloaded from github.com/fraunhoferhhi. Not needed by `make test` or `make book`.
VVC_SRC ?=
vvc:
	VVC_SRC="$(VVC_SRC)" VVC_JOBS=2 VVC_NICE=10 bash tools/build_vvc.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_codec.py

clean:
	rm -rf _build .cache
