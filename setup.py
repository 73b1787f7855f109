"""Install with ``pip install -e .[dev]``; ``make setup`` does it in a virtual environment."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
PAPER = "https://arxiv.org/abs/2509.26015"

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    README = f.read()

setup(
    name="indirect-attention-oneshot",
    version="0.1.0",
    description="One-shot object detection with indirect attention (a DETR whose keys come from the exemplar)",
    long_description=README,
    long_description_content_type="text/markdown",
    author="The indirect-attention one-shot detection developers",
    license="MIT",
    url=PAPER,  # the method's page until the project has its own public one
    project_urls={"Paper": PAPER, "Paper's official code": "https://github.com/Bissmella/IA-DETR"},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    python_requires=">=3.10",
    packages=find_packages(include=["detector", "detector.*"]) + ["detector_tools"],  # tools/analysis: checkout only
    package_dir={"detector_tools": "tools"},
    install_requires=[
        "torch>=2.2,<3",
        "torchvision>=0.17",
        "timm>=0.9,<2",
        "albumentations>=1.4,<3",
        "pycocotools>=2.0.7",
        "scipy>=1.10",
        "numpy>=1.24",
        "pillow>=9",
        "PyYAML>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    package_data={"detector.server": ["static/*"]},
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3.5", "hypothesis>=6.100", "tensorboard>=2.14", "httpx>=0.27", "playwright>=1.40", "onnx>=1.15", "onnxruntime>=1.17",
                "fastapi>=0.110", "uvicorn>=0.27", "python-multipart>=0.0.9"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.27", "python-multipart>=0.0.9"],
        "fast-eval": ["faster-coco-eval>=1.6"],
        "tensorboard": ["tensorboard>=2.14"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
    },
    entry_points={
        "console_scripts": [
            "oneshot-train=detector_tools.train:main",
            "oneshot-evaluate=detector_tools.evaluate:main",
            "oneshot-infer=detector_tools.infer:main",
            "oneshot-benchmark=detector_tools.benchmark:main",
            "oneshot-demo=detector_tools.demo:main",
            "oneshot-serve=detector_tools.serve:main",
            "oneshot-export=detector_tools.export:main",
        ]
    },
)
