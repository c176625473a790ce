"""Hugging Face ``transformers`` models: ViT, DeiT, CLIP and SigLIP, seen through the same seams as timm and open_clip.

- :mod:`.attention`: the attention probe, a function registered in transformers'
  own attention-function registry (no ``forward`` is replaced);
- :mod:`.structure`: the layer stack and each layer's parts, read from the
  model itself (module names differ between transformers releases);
- :mod:`.families`: what differs between the four model families (embeddings,
  pooling, heads), each in one small class;
- :mod:`.tower`, :mod:`.lrp`: the driver's :class:`~heatmap.models.protocols.Tower`
  and the LRP view over any of them;
- :mod:`.classifier`, :mod:`.image_text`: the adapters; :mod:`.loading`: repo
  ids, local directories, processors and tokenizers.
"""
