"""Dark Halo Scope: strong-lens finding in DESI Legacy Surveys DR10 without fooling ourselves.

Two packages: ``dhs_spark`` (catalogues, survey access, lensing simulations, Spark jobs,
anchors, hard negatives) and ``trainer`` (the PyTorch trainer). Extras select what a node
needs; ``constraints.txt`` pins the versions CI and development use.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "spark": ["pyspark>=3.5,<3.6", "pyarrow>=14", "pandas>=1.5,<3"],
    "sims": ["galsim>=2.5", "h5py>=3.8", "astropy>=5.3", "astropy-healpix>=1.0", "numba>=0.58", "scipy>=1.10", "speclite>=0.16"],
    "train": ["torch>=2.1", "scikit-learn>=1.3", "tqdm>=4.60", "safetensors>=0.4"],
    "aws": ["boto3>=1.28"],
    "report": ["matplotlib>=3.7"],
    "dev": ["pytest>=7.4", "lenstronomy>=1.14,<1.15", "moto[server]>=5.0", "ruff>=0.5"],
}
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "dev" for req in reqs})

setup(
    name="dark-halo-scope",
    version="0.1.0",
    description="Strong-lens injection, training and anchor validation for DESI Legacy Surveys DR10",
    long_description=__doc__,
    python_requires=">=3.9",
    packages=find_packages(include=["dhs_spark", "dhs_spark.*", "trainer", "trainer.*"]),
    package_data={"dhs_spark": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=["numpy>=1.23", "pyyaml>=6.0", "requests>=2.28"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "dhs=dhs_spark.cli:main",
            "dhs-train=trainer.train:main",
            "dhs-score=trainer.score:main",
        ]
    },
)
