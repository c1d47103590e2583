"""cgflow: potentials of mean force in coarse-grained coordinates from conditional
normalizing flows trained by energy, with importance sampling and active learning."""

__version__ = "0.1.0"
