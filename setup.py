"""crypto-doctor: encrypted (MPC) brain-MRI diagnosis with a blind doctor panel.

Install with ``scripts/setup`` (exact pins from requirements.lock, CrypTen without its
stale dependency list); ``pip install .`` alone works once those are present.
"""

from setuptools import find_packages, setup

setup(
    name="crypto-doctor",
    version="0.1.0",
    description="Privacy-preserving second opinions on brain-MRI slices: CrypTen MPC + blind doctor panel",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["infra", "models", "training*", "predictor*", "marketplace*"]),
    include_package_data=True,
    package_data={
        "marketplace": [
            "migrations/*.py",
            "migrations/*.mako",
            "migrations/versions/*.py",
            "service/static/*",
            "service/*.yaml",
            "static/*",
        ],
        "models": ["*.pth", "*.json"],
        "predictor": [
            "*.yaml",
            "clinic/migrations/*.py",
            "clinic/migrations/*.mako",
            "clinic/migrations/versions/*.py",
        ],
    },
    # Runtime pins live in requirements.lock; crypten==0.4.1 is installed with --no-deps
    # because its metadata requires the deprecated "sklearn" package name.
    install_requires=[],
    entry_points={
        "console_scripts": [
            "crypto-doctor-predictor=predictor.__main__:main",
            "crypto-doctor-train=training.__main__:main",
            "crypto-doctor-doctors=marketplace.doctors:main",
            "crypto-doctor-researcher=marketplace.researcher:main",
        ]
    },
)
