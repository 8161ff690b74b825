# The two commands of the README:
#   make book   set up .venv, build the HTML book into _build/html
#   make test   set up .venv (and Chromium if missing), build with warnings as
#               errors, run every test, the browser tests of the HTML included
# Authors: `make execute` re-executes every chapter notebook in place;
#          `make lock` refreshes constraints.txt, the pins of every package;
#          `make bench` times bnlib against torch and every notebook (bench/);
#          `make explorer` rewrites chapter 7's explorable figure's data file
#          from the chapter's stored outputs (after `make execute`).
# Readers: `make lab` opens the notebooks in JupyterLab (optional requirements-lab.txt);
#          `make pdf` builds the whole book as one PDF (needs xelatex, see README).

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
JB        := $(VENV)/bin/jupyter-book
STAMP     := $(VENV)/.installed
LAB_STAMP := $(VENV)/.lab-installed
MATHJAX_VERSION := 3.2.2
MATHJAX   := _vendor/mathjax/tex-chtml.js
JB_FLAGS  := -W -n --keep-going
PYTEST_FLAGS ?=
# Debian's Chromium drives the browser tests (tests/test_site.py).
CHROMIUM  := /usr/bin/chromium
SUDO      := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: book test execute explorer bench lab lock pdf html clean

book: $(STAMP) $(MATHJAX)
	$(JB) build . $(JB_FLAGS)
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: $(STAMP) $(MATHJAX) $(CHROMIUM)
	$(JB) build . $(JB_FLAGS)
	$(PY) -m pytest $(PYTEST_FLAGS)

execute: $(STAMP)
	$(PY) scripts/execute_notebooks.py

explorer: $(STAMP)
	$(PY) scripts/explorer_data.py

# Benchmarks, not tests: tables in bench/results_*.md (quoted in the README).
bench: $(STAMP)
	$(PY) bench/bench_bn.py --output bench/results_bn.md
	$(PY) bench/time_notebooks.py --output bench/results_notebooks.md

lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab book/

# Debian/Ubuntu: apt-get install texlive-xetex texlive-latex-extra latexmk
#                texlive-fonts-recommended fonts-freefont-otf
pdf: $(STAMP)
	@command -v xelatex > /dev/null && command -v latexmk > /dev/null || { echo \
	  "make pdf needs xelatex and latexmk: apt-get install texlive-xetex texlive-latex-extra" \
	  "latexmk texlive-fonts-recommended fonts-freefont-otf"; exit 1; }
	$(JB) build . --builder pdflatex
	@echo "The PDF is at $(CURDIR)/_build/latex/book.pdf"

$(LAB_STAMP): $(STAMP) requirements-lab.txt
	$(PY) -m pip install --quiet -r requirements-lab.txt -c constraints.txt
	touch $@

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt -e .
	touch $@

# Refresh the lock of the whole environment: resolve requirements.txt afresh in a
# scratch venv and pin every package it installed (torch without its +cpu tag).
LOCK_VENV := _build/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet -r requirements.txt
	{ sed -n '/^#/p' constraints.txt; \
	  $(LOCK_VENV)/bin/python -m pip freeze | sed -E 's/\+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

# MathJax 3 from the npm registry, so that formulas typeset with no network.
$(MATHJAX):
	rm -rf _vendor/mathjax _vendor/.npm && mkdir -p _vendor/.npm
	cd _vendor/.npm && npm pack --silent mathjax@$(MATHJAX_VERSION) > /dev/null
	tar -xzf _vendor/.npm/mathjax-$(MATHJAX_VERSION).tgz -C _vendor/.npm
	mv _vendor/.npm/package/es5 _vendor/mathjax
	rm -rf _vendor/.npm
	test -f $@

# Installed from Debian's archive only when missing (no other browser download
# works on a closed network).
$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
	test -x $@

clean:
	rm -rf _build _vendor
