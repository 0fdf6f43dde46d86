"""clora3d: parameter-efficient fine-tuning of point cloud transformers with CLoRA.

Importing the package has no side effects: nothing is compiled, downloaded or read.
"""

__version__ = "0.1.0"
