"""The bottom layer shared by ``annotate`` (writes shards) and ``rsfiqa`` (reads them): the shard
contract, image reading, the segmenter/describer protocols, tar reading and device selection.
It imports neither of them (checked by ``lint-imports``)."""
