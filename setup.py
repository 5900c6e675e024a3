from setuptools import find_packages, setup

setup(
    name="dlsa_prod",
    version="0.1.0",
    description="Production DLSA (Dynamic Label Space Adjustment) for long-tailed recognition",
    packages=find_packages(include=["dlsa_prod", "dlsa_prod.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "onnx", "onnxruntime", "click", "h5py", "pyyaml", "pydantic>=2",
                      "tqdm", "safetensors", "matplotlib", "scikit-learn"],
    entry_points={"console_scripts": ["dlsa-prod=dlsa_prod.cli:main"]},
)
