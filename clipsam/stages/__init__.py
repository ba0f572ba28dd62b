"""The pipeline, one module per stage, each a set of functions with typed inputs and outputs:

prepare (image in -> pixels at processing size) -> propose (a MaskProposer -> candidate masks) -> nest (near-duplicates
merged, containment parents) -> embed (masked crops -> a RegionEmbedder) -> label (a pure function of embeddings,
parents, taxonomy, text embeddings and a policy) -> parts / refine (more SAM prompts on the cached embedding) ->
assemble (full-resolution :class:`~clipsam.Segmentation`).

:class:`~clipsam.Segmenter` owns the models, caches and configuration and calls these stages in order. Nothing
here imports torch.
"""
