"""The batch layout: from collated samples to what one rank's attention backend reads.

The one home of everything between a sample (`data/sample.py`) and the model's forward:
- `zigzag.py`: the context-parallel zigzag split (one implementation, numpy and torch);
- `context_parallel.py`: a sample's CP part for our attention modules, document padding;
- `thd.py`: Transformer Engine's packed (THD) micro-batches, split per document under CP;
- `inputs.py`: the forward's keyword arguments per input format (mask | segments | thd);
- `layout.py`: `rank_micro_batch`, which picks among the above for a rank and a backend.
"""
