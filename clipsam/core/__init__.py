"""The pure core: numpy, Pillow, pycocotools and PyYAML, never torch. Fast to test, and reusable by people who
bring their own models.

- :mod:`.image`: any image input -> ``(H, W, 3) uint8`` RGB (EXIF, modes, 16-bit, alpha, bomb limit);
- :mod:`.masks`: COCO RLE, the one mask format (areas, boxes, IoU and intersections past pycocotools' limits);
- :mod:`.regions`: :class:`~.regions.Regions`, the columnar container of an image's regions, and its rows;
- :mod:`.tree`: near-duplicate merging and containment parents;
- :mod:`.taxonomy`: label trees from YAML;
- :mod:`.crops`: masked crops for CLIP;
- :mod:`.labels`: prompt ensembles, the text-embedding cache and the scoring primitives;
- :mod:`.config`: checks of configuration values.
"""
