"""Build script shared by colcon (ament_python) and plain pip.

Extras (see README "Install"):
  sim       the simulated workcell and the real device client libraries it serves
  test      pytest, hypothesis, ruff
  model     the policy model: torch, safetensors, tqdm, ONNX export and onnxruntime (CPU)
  vae       diffusers, to load a Stable-Diffusion-format AutoencoderKL from a local folder
  lerobot   pyarrow and PyAV, to export recorded episodes as a LeRobot v3 dataset
  gpu       CUDA inference through onnxruntime-gpu (install a CUDA torch build yourself)
  tensorrt  native TensorRT 10 engines (needs NVIDIA's index and a GPU)

torch is pinned to 2.13.0. On Linux, PyPI's default torch wheel brings CUDA
packages; CPU-only users install torch==2.13.0 first from PyTorch's CPU-only
wheel index (``pip install torch==2.13.0 --index-url <that index>``) and pip then
keeps that build. The Makefile installs the extras with plain pip,
which takes whatever torch 2.13.0 build pip's configuration finds first.
"""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "demuse_ros"
#: ROS 2 nodes; colcon installs them to lib/demuse_ros (setup.cfg) for `ros2 run`.
NODES = ("camera_node", "ft_node", "arm_node", "policy_node", "recorder_node", "sim_node")


def share_tree(folder: str) -> list[tuple[str, list[str]]]:
    """``(share/demuse_ros/<dir>, files)`` for every folder under ``folder`` (checkpoint
    folders keep their layout)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        keep = sorted(
            os.path.join(root, f) for f in files if not f.startswith(".") and not f.endswith(".pyc")
        )
        if keep:
            out.append((f"share/{PACKAGE}/{root}", keep))
    return out


install_requires = [
    "numpy>=1.24",
    "scipy>=1.10",
    "PyYAML>=6.0",
    "rich>=13",  # the run dashboard
    "matplotlib>=3.8",  # the run report's plots
    "mcap>=1.1,<2",  # episode files (demuse record)
    "mcap-ros2-support>=0.5,<0.7",  # ROS 2 message schemas/CDR in them (uses its encoder module)
]

extras_require = {
    "sim": [
        "mujoco>=3.2",
        "ur-rtde==1.6.5",
        "pymodbus==3.16.1",
        "pyrealsense2==2.59.1.11053",
    ],
    "test": [
        "pytest>=8",
        "hypothesis>=6.100",
        "ruff>=0.6",
    ],
    "model": [
        "torch==2.13.0",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "onnx>=1.16",
        "onnxscript>=0.5",
        "onnxruntime>=1.20",
    ],
    "vae": [
        "diffusers>=0.30",
    ],
    "lerobot": [
        "pyarrow>=14",
        "av>=12",
    ],
    "gpu": [
        "onnxruntime-gpu>=1.20",
    ],
    "tensorrt": [
        "tensorrt>=10,<11",
    ],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Real-time DeMUSE diffusion-policy runtime for a UR10 + RG2-FT + D435i cell",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        *share_tree("models"),
    ],
    install_requires=install_requires,
    extras_require=extras_require,
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "demuse = demuse_ros.cli:main",
            *(f"{node} = {PACKAGE}.ros.{node}:main" for node in NODES),
        ],
    },
)
