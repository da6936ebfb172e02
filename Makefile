# Aliases for the common tasks, plus setup / demo / test. Every target but
# setup depends on setup; none is a second implementation of a task.
VENV    := .venv
PY      := $(VENV)/bin/python
INV     := $(VENV)/bin/inv
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_HOME = $(abspath $(DEMO_DIR))
REPO    ?=

# Commands run by the targets (and the repos' own tests) see the venv first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test status scan build test-repo test-all sync-all clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[test]'
	touch $(STAMP)

demo: setup
	$(PY) scripts/make_demo_workspace.py $(DEMO_DIR)
	@echo; echo '$$ ORCHESTRATOR_HOME=$(DEMO_DIR) inv scan'
	ORCHESTRATOR_HOME=$(DEMO_HOME) $(INV) scan
	@echo; echo '$$ ORCHESTRATOR_HOME=$(DEMO_DIR) inv status'
	ORCHESTRATOR_HOME=$(DEMO_HOME) $(INV) status
	@echo; echo '$$ ORCHESTRATOR_HOME=$(DEMO_DIR) inv test-all    # deploy-tools fails on purpose: exit 1 expected'
	ORCHESTRATOR_HOME=$(DEMO_HOME) ORCHESTRATOR_LOG_DIR=$(DEMO_HOME)/logs $(INV) test-all || [ $$? -eq 1 ]
	@echo; echo '$$ ORCHESTRATOR_HOME=$(DEMO_DIR) inv sync-all --dry-run'
	ORCHESTRATOR_HOME=$(DEMO_HOME) ORCHESTRATOR_LOG_DIR=$(DEMO_HOME)/logs $(INV) sync-all --dry-run

test: setup
	$(PY) -m pytest -q

status: setup
	$(INV) status

scan: setup
	$(INV) scan

build: setup
	@test -n "$(REPO)" || { echo "error: usage: make build REPO=name" >&2; exit 2; }
	$(INV) build $(REPO)

test-repo: setup
	@test -n "$(REPO)" || { echo "error: usage: make test-repo REPO=name" >&2; exit 2; }
	$(INV) test $(REPO)

test-all: setup
	$(INV) test-all

.PHONY: foreach
# $(value CMD) is the text as typed ($ signs and quotes untouched), single-quoted
# for the shell: make foreach CMD='git log -1 --format=%s'
unexport CMD  # exporting would expand it: make functions in the text would run
foreach: setup
	@$(if $(value CMD),true,{ echo "error: usage: make foreach CMD='git status -s'" >&2; exit 2; })
	$(INV) foreach --command='$(subst ','\'',$(value CMD))'

sync-all: setup
	$(INV) sync-all

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
