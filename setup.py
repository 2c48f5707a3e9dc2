from setuptools import find_packages, setup

setup(
    name="refine_hooks",
    version="0.1.0",
    description="SAM-based mask refinement (SAMRefiner, SAMRefiner++, Phoenix) for Detectron2 and MMDetection",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["refine_hooks", "refine_hooks.*"]),
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "segment-anything==1.0",
        "pycocotools>=2.0.7",
        "lvis==0.5.3",
        "numpy>=1.24",
        "scipy>=1.10",
        "opencv-python-headless>=4.8",
        "pillow>=10",
        "tqdm>=4.60",
    ],
    extras_require={
        # mmcv 2.1.0 must be built from source with its ops: `make mmdet` (tools/install_mmdet.sh) does it.
        # mmengine resolves `mmdet::` configs with pkg_resources, gone from setuptools >= 82.
        "mmdet": ["mmengine>=0.10.0,<0.11", "mmdet==3.3.0", "setuptools>=77.0.3,<82"],
        # Detectron2 is not on PyPI: `make detectron2` (tools/install_detectron2.sh) builds it and installs Mask2Former.
        "detectron2": [],
        # HQ-SAM models (sam_hq_vit_b/l/h).
        "hq": ["segment-anything-hq==0.3", "timm"],
        "dev": ["pytest>=7", "pytest-timeout", "segment-anything-hq==0.3", "timm"],
    },
)
