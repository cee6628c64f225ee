"""Apart from the pipeline: the synthetic amortisation-gap benchmark (planted sparse codes; SAE vs MLP vs sparse coding vs ITO)."""
