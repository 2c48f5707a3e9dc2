# The two commands a newcomer runs: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The demo refines with SAM ViT-B (downloaded once into ~/.cache/refine_hooks, or $REFINE_HOOKS_CACHE).
# Offline: put the file where the error message says, or `make demo CHECKPOINT=/path/to/sam_vit_b_01ec64.pth`.
MODEL ?= vit_b
CHECKPOINT ?=
DEVICE ?= cpu
OUT ?= outputs/demo
DEMO := tools/demo_data

.PHONY: install mmdet detectron2 fastgeodis demo test

$(VENV)/.installed: setup.py
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# MMDetection 3.3.0 with mmcv 2.1.0 built from source (the first build takes ~15 minutes; the wheel is cached).
mmdet: install
	bash tools/install_mmdet.sh $(PY)

# Detectron2 built from source and Mask2Former (its tree on sys.path; its CUDA op only where CUDA is), from
# GitHub or from $DETECTRON2_SOURCE / $MASK2FORMER_SOURCE (archives or folders). ~2 minutes; the wheel is cached.
detectron2: install
	bash tools/install_detectron2.sh $(PY)

# FastGeodis, only for the test that checks distance="raster" against the authors' library (~1 minute, cached).
fastgeodis: install
	bash tools/install_fastgeodis.sh $(PY)

demo: install
	$(PY) tools/refine_pseudo_labels.py $(DEMO)/coarse.json --images $(DEMO)/images --out $(OUT)/refined.json \
		--model-type $(MODEL) --device $(DEVICE) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))
	$(PY) tools/visualize_refinement.py --coarse $(DEMO)/coarse.json --refined $(OUT)/refined.json \
		--images $(DEMO)/images --out $(OUT)/overlay.png
	$(PY) tools/evaluate.py --gt $(DEMO)/ground_truth.json --dt $(DEMO)/coarse.json --compare $(OUT)/refined.json \
		--iou-type segm boundary --out $(OUT)/metrics.json

test: install mmdet detectron2 fastgeodis
	$(PY) -m pytest tests
