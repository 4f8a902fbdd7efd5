"""musicflax: VQ-VAE + autoregressive prior for classical music (MusicNet), in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="musicflax",
    version="0.1.0",
    description="Generative models of classical music (MusicNet) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["musicflax", "musicflax.*"]),
    package_data={"musicflax.data": ["sample_set/*.json", "sample_set/*.csv", "sample_set/*.md",
                                     "sample_set/musicnet/*/*.csv.gz"]},
    # Versions seen installing and working together on Python 3.11 (CPU).
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "tensorflow-cpu==2.21.0",
        "tensorflow-datasets==4.9.10",
        "tensorboard==2.21.0",
        "ml-collections==1.1.0",
        "clu==0.0.12",
        "pretty_midi==0.2.11",
        "mir_eval==0.8.2",
        "numpy>=2.1,<2.5",
        "scipy>=1.13",
        "matplotlib>=3.8",
        "absl-py>=2.1",
        "etils[epath]>=1.7",
    ],
    extras_require={
        # librosa and scikit-learn pin the hand-written STFT, mel filterbank and average
        # precision in tests; nothing else uses them. pytest-xdist runs test files on 2 workers.
        "test": ["pytest>=8", "pytest-xdist==3.8.0", "librosa==0.11.0", "scikit-learn==1.9.1"],
        # benchmarks/peer_torch.py only: the PyTorch twin it times musicflax against.
        "bench": ["torch==2.13.0", "vector-quantize-pytorch==1.32.0"],
        # Only scripts/build_sample_set.py needs music21 (to rebuild the shipped sample set).
        "sampleset": ["music21==10.5.1"],
    },
)
