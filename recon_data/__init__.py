"""recon-data: build recontextualized training datasets and run rounds of offline training on them."""

__version__ = "0.1.0"
