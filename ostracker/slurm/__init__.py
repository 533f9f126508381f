"""The Slurm backend: jobs run by a Slurm cluster, driven through its own commands."""
