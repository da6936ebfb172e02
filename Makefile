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

.PHONY: setup demo demo-workers test status scan build test-repo test-all sync-all clean

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

# Proof workers on a demo project with a scripted agent, on a private tmux socket:
# launch, wait for the run to finish, show status, clean up (worktrees are pushed, so removed).
WORKERS_DEMO_DIR ?= demo-workers
WORKERS_DEMO_HOME = $(abspath $(WORKERS_DEMO_DIR))/home
ORCHESTRATOR_TMUX_SOCKET ?= orchestrator-demo
WORKERS = cd scripts/proof-workers && ORCHESTRATOR_HOME=$(WORKERS_DEMO_HOME) ORCHESTRATOR_TMUX_SOCKET=$(ORCHESTRATOR_TMUX_SOCKET) $(abspath $(PY)) -m orchestrator

demo-workers: setup
	$(PY) scripts/make_workers_demo.py $(WORKERS_DEMO_DIR)
	@echo; echo '$$ python3 -m orchestrator launch    # attach: tmux -L $(ORCHESTRATOR_TMUX_SOCKET) attach -t proof-demo'
	$(WORKERS) launch
	$(PY) scripts/make_workers_demo.py --wait 120 $(WORKERS_DEMO_DIR) || { $(WORKERS) status; $(WORKERS) cleanup --keep-worktrees; exit 1; }
	@echo; echo '$$ python3 -m orchestrator status'
	$(WORKERS) status
	@echo; echo '$$ python3 -m orchestrator cleanup'
	$(WORKERS) cleanup

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

sync-all: setup
	$(INV) sync-all

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(WORKERS_DEMO_DIR) .pytest_cache
