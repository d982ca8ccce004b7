"""Install vc2: `pip install torch==2.13.0 -e ".[test]"` (CPU) -- see README.md for GPU machines."""
from setuptools import find_packages, setup

# the offline visual-fidelity score (vc2/eval/fidelity.py), at the versions its figures were measured with
EVAL = ["scikit-image==0.26.0", "ImageHash==4.3.2", "scipy==1.17.1"]
# API models as the answer source, and the judge (vc2/eval/api.py, vc2/eval/judge.py)
API = ["openai==3.51.0"]

setup(
    name="vc2",
    version="0.1.0",
    description="Minimal pure-PyTorch VisCoder2: Qwen2.5-Coder model, SFT trainer, sampler, VisPlotBench evaluation",
    python_requires=">=3.10",
    # vc2.kernels is the top-level kernels/ directory, reached through the vc2/kernels symlink (see
    # kernels/dispatch.py for why it has no top-level import name of its own)
    packages=find_packages(include=["vc2", "vc2.*"]) + ["vc2.kernels"],
    include_package_data=True,
    package_data={"vc2": ["eval/assets/**/*", "assets/**/*"]},
    install_requires=[
        # torch is deliberately unpinned here: CPU machines install torch==2.13.0 first (README),
        # GPU machines install the CUDA build they need. Anything >= 2.10 has the APIs we use.
        "torch>=2.10",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        # transformers is a test-only *reference*: vc2 never imports it at run time.
        "test": ["pytest>=8", "transformers==5.24.0", "jinja2", "gguf==0.19.0",
                 "accelerate==1.15.0",  # transformers' own GGUF loader (the converter's reference) needs it
                 "pyarrow==26.0.1",     # parquet task/data files are tested too
                 *EVAL, *API],          # the fidelity score, the API client and the judge are tested too
        # Triton for the CPU tests, which run the kernels under its interpreter: the version torch 2.13
        # pins. Only for CPU machines: a CUDA torch brings its own triton, which this pin would replace.
        "cpu-triton": ["triton==3.7.1"],
        # GPU only; has no wheels and needs a CUDA torch already installed (README).
        "gpu": ["flash-attn>=2.6; sys_platform == 'linux'"],
        # the embedded SmolLM2 demo model is converted from a GGUF file
        "demo": ["gguf==0.19.0"],
        "data": ["pyarrow>=14"],
        "eval": EVAL,
        "api": API,
    },
)
