"""``python -m dlsa_prod`` = the ``dlsa-prod`` command; the entry point torchrun needs:
``torchrun --nproc_per_node N -m dlsa_prod train CONFIG``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="dlsa-prod")
