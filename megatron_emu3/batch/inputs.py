"""Turn a batch of packed samples into the arguments of the model's forward, per attention backend.

Input formats (`DecoderChoice.input_format` in `spec.py`):
- ``mask``: local spec with torch SDPA: a boolean document mask [b, 1, s, s] from the segment ids.
- ``segments``: ring attention (context parallelism) and flash-attn varlen: the segment ids [b, s]
  themselves (this CP rank's zigzag part under CP); the module masks by document itself.
- ``thd``: Transformer Engine: the packed format. The b samples are laid end to end as one row
  [1, b*s]; `cu_seqlens` marks every document (documents never cross a sample boundary, so this is
  exactly the per-sample attention). RoPE positions restart per document there (equivalent for
  attention: RoPE scores depend only on distances inside a document). Under context parallelism the
  data feed builds these batches itself (`batch/thd.py`: documents padded to 2*cp, split per
  document) and passes ``cu_seqlens``/``max_seqlen``; without them they are derived here (cp = 1).
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_emu3.batch.thd import flat_document_bounds

INPUT_FORMATS = ("mask", "segments", "thd")


def document_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Causal, document-local mask [b, 1, s, s] from segment ids [b, s]; True = may NOT attend."""
    seq_len = segment_ids.shape[-1]
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=segment_ids.device).tril_()
    return ~(same_doc & causal)[:, None]


def document_cu_seqlens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32 [n_docs + 1], longest document) of segment ids [b, s] flattened to b*s tokens."""
    cu = flat_document_bounds(segment_ids)
    return cu.to(torch.int32), int((cu[1:] - cu[:-1]).max().item())


def packed_seq_params(segment_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                      max_seqlen: int | None = None) -> PackedSeqParams:
    """THD parameters: the given (padded, whole-row) boundaries, or those of segment ids [b, s] laid end
    to end. ``cu_seqlens_*_padded`` equal the boundaries: padding is part of its document (batch/thd.py)."""
    if cu_seqlens is None:
        cu_seqlens, max_seqlen = document_cu_seqlens(segment_ids)
    cu = cu_seqlens.to(torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                           cu_seqlens_kv_padded=cu, max_seqlen_q=int(max_seqlen), max_seqlen_kv=int(max_seqlen))


def model_inputs(batch: dict[str, torch.Tensor], input_format: str = "mask") -> dict:
    """Keyword arguments for GPTModel.forward (tokens, positions, mask or packed params, labels)."""
    if input_format == "segments":
        return dict(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                    attention_mask=batch["segment_ids"], labels=batch["labels"])
    if input_format == "mask":
        return dict(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                    attention_mask=document_attention_mask(batch["segment_ids"]), labels=batch["labels"])
    if input_format == "thd":
        params = packed_seq_params(batch["segment_ids"], batch.get("cu_seqlens"), batch.get("max_seqlen"))
        return dict(input_ids=batch["tokens"].reshape(1, -1), position_ids=batch["position_ids"].reshape(1, -1),
                    attention_mask=None, labels=batch["labels"].reshape(1, -1), packed_seq_params=params)
    raise ValueError(f"unknown model input format {input_format!r}; one of {INPUT_FORMATS}")
