"""Direct preference optimisation: preference shards, the DPO loss and step, and the trainer (`train.py`)."""
